"""End-to-end runs: corpus -> vocabulary -> tf.data -> ``model.fit`` -> files in a directory.

The CLI (``keras-rnnlm train``/``evaluate``) and the notebooks call these functions; a run
directory holds ``model.keras``, ``vocabulary.json``, ``metrics.json`` and ``config.json``.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import keras

from keras_rnnlm.data.corpora import Corpus, load_corpus, text_files_corpus
from keras_rnnlm.data.pipelines import encode_corpus, sentence_dataset, stream_dataset, token_stream
from keras_rnnlm.data.vocabulary import BOS, EOS, Vocabulary
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.training import (
    PRESETS,
    EpochDecay,
    ResetStatesCallback,
    StopOnDivergence,
    compile_language_model,
    evaluate_perplexity,
    evaluate_stream_perplexity,
)

MODEL_FILE, VOCAB_FILE, METRICS_FILE, CONFIG_FILE = (
    "model.keras",
    "vocabulary.json",
    "metrics.json",
    "config.json",
)


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; the defaults train on the offline ``python_docs``."""

    corpus: str = "python_docs"  # python_docs | ptb | tiny_shakespeare (ignored with train_file)
    train_file: str | None = None  # your own text, one sentence per line
    valid_file: str | None = None
    test_file: str | None = None
    data_dir: str | None = None  # TFDS data_dir (prepared datasets are written here)
    manual_dir: str | None = (
        None  # directory with the raw corpus files (default ../shared/data/<corpus>)
    )
    level: str | None = None  # word | char (default: the corpus's own)
    max_vocabulary_size: int = 10000  # special tokens included
    min_count: int = 2  # rarer tokens become <unk> (word level; PTB keeps its own 10k words)
    mode: str = "sentence"  # sentence batches | stream (truncated BPTT, stateful)
    cell: str = "lstm"
    num_layers: int = 2
    units: int = 200
    embedding_dim: int = 200
    dropout: float = 0.0
    tie_embeddings: bool = False
    init_scale: float | None = None
    batch_size: int = 32
    num_steps: int = 20  # stream mode window length
    max_length: int = 100  # sentence mode: longer sentences are split into windows
    epochs: int = 6
    steps_per_epoch: int | None = None
    optimizer: str = "adam"
    learning_rate: float = 0.002
    clip_norm: float | None = 5.0
    clipping: str = "global"
    decay_start_epoch: int | None = None  # EpochDecay: constant for this many epochs...
    decay_factor: float = 1.0  # ...then divided by this each epoch
    use_builtin_layers: bool = False
    # True: XLA-compile the train step (one compilation per batch shape); False: graph mode;
    # "recurrence": graph step with XLA-compiled time loops (see compile_language_model)
    jit_compile: bool | str = True
    output_dtype: str = "float32"  # "bfloat16": output layer matmuls in bfloat16 (fp32 weights)
    seed: int = 0
    output: str = "rnnlm_run"
    overwrite: bool = False
    verbose: int = 1

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TrainConfig":
        """PTB settings of Zaremba et al. 2014 (``small``/``medium``/``large``), stream mode.

        On the from-scratch layers the presets train with ``jit_compile="recurrence"`` and
        ``output_dtype="bfloat16"`` (graph-mode step, XLA time loops, output layer matmuls in
        bfloat16 on oneDNN, float32 weights/softmax/loss): about 2x faster on CPU than the
        whole-step XLA float32 compilation, with a loss curve matching float32 (see
        benchmarks/RESULTS.md). Override ``jit_compile=True, output_dtype="float32"`` for the
        previous behaviour. With ``use_builtin_layers=True`` they stay whole-step XLA float32.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS)}.")
        p = PRESETS[name]
        values = dict(
            corpus="ptb",
            mode="stream",
            cell="lstm",
            num_layers=p.num_layers,
            units=p.units,
            embedding_dim=p.units,
            dropout=p.dropout,
            init_scale=p.init_scale,
            batch_size=p.batch_size,
            num_steps=p.num_steps,
            epochs=p.epochs,
            optimizer="sgd",
            learning_rate=p.keras_learning_rate,
            clip_norm=p.keras_clip_norm,
            clipping="global",
            decay_start_epoch=p.decay_start_epoch,
            decay_factor=p.decay_factor,
        )
        if not overrides.get("use_builtin_layers", False):
            values.update(jit_compile="recurrence", output_dtype="bfloat16")
        values.update(overrides)
        return cls(**values)


def load_config_corpus(config: TrainConfig) -> Corpus:
    if config.train_file:
        return text_files_corpus(
            config.train_file, config.valid_file, config.test_file, level=config.level or "word"
        )
    return load_corpus(config.corpus, config.manual_dir, config.data_dir, config.level)


def build_vocabulary(corpus: Corpus, config: TrainConfig) -> Vocabulary:
    min_count = 1 if corpus.pretokenized or corpus.level == "char" else config.min_count
    return Vocabulary.build(
        corpus.train,
        level=corpus.level,
        max_size=None if corpus.closed_vocabulary else config.max_vocabulary_size,
        min_count=min_count,
        lowercase=corpus.lowercase,
        pretokenized=corpus.pretokenized,
        sentence_start=EOS if config.mode == "stream" else BOS,
    )


def make_dataset(sentences, config: TrainConfig, training: bool):
    """The ``tf.data`` pipeline of a split for the run's mode."""
    if config.mode == "stream":
        return stream_dataset(sentences, config.batch_size, config.num_steps)
    return sentence_dataset(
        sentences,
        batch_size=config.batch_size,
        max_length=config.max_length,
        shuffle=training,
        seed=config.seed,
    )


def build_model(config: TrainConfig, vocabulary_size: int) -> RNNLanguageModel:
    model = RNNLanguageModel(
        vocabulary_size,
        cell=config.cell,
        num_layers=config.num_layers,
        units=config.units,
        embedding_dim=config.embedding_dim,
        dropout=config.dropout,
        tie_embeddings=config.tie_embeddings,
        init_scale=config.init_scale,
        stateful=config.mode == "stream",
        use_builtin_layers=config.use_builtin_layers,
        output_dtype=config.output_dtype,
    )
    batch = config.batch_size if config.mode == "stream" else None
    model.build((batch, None))
    return model


def _check_output_dir(path: Path, overwrite: bool):
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--output {path} exists and is not a directory.")
    if not overwrite and (path / MODEL_FILE).exists():
        raise FileExistsError(
            f"{path / MODEL_FILE} already exists; choose another --output or pass --overwrite."
        )


def train(config: TrainConfig) -> dict:
    """Train, evaluate and save a language model; returns the metrics written to metrics.json."""
    if config.mode not in ("sentence", "stream"):
        raise ValueError(f"mode must be 'sentence' or 'stream', got {config.mode!r}.")
    output = Path(config.output)
    _check_output_dir(output, config.overwrite)
    keras.utils.set_random_seed(config.seed)

    corpus = load_config_corpus(config)
    vocabulary = build_vocabulary(corpus, config)
    splits = {
        name: encode_corpus(vocabulary, corpus.split(name)) for name in ("train", "valid", "test")
    }
    if not splits["train"]:
        raise ValueError(f"The training split of {corpus.name!r} is empty.")
    datasets = {n: make_dataset(s, config, training=(n == "train")) for n, s in splits.items() if s}

    model = build_model(config, vocabulary.size)
    compile_language_model(
        model,
        config.optimizer,
        config.learning_rate,
        config.clip_norm,
        config.clipping,
        level=corpus.level,
        jit_compile=config.jit_compile,
    )
    output.mkdir(parents=True, exist_ok=True)
    vocabulary.save(output / VOCAB_FILE)
    (output / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2))

    callbacks = [
        StopOnDivergence(),
        keras.callbacks.ModelCheckpoint(str(output / "checkpoint.keras")),
    ]
    if config.mode == "stream":
        callbacks.append(ResetStatesCallback())
    if config.decay_start_epoch is not None:
        schedule = EpochDecay(config.learning_rate, config.decay_start_epoch, config.decay_factor)
        callbacks.append(keras.callbacks.LearningRateScheduler(schedule))
    train_data = datasets["train"]
    if config.steps_per_epoch and config.mode == "sentence":
        train_data = train_data.repeat()
    start = time.time()
    history = model.fit(
        train_data,
        validation_data=datasets.get("valid"),
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        callbacks=callbacks,
        verbose=config.verbose,
    )
    train_seconds = time.time() - start
    model.save(output / MODEL_FILE)

    metrics = {
        "corpus": corpus.name,
        "level": corpus.level,
        "mode": config.mode,
        "vocabulary_size": vocabulary.size,
        "epochs_run": len(history.history.get("loss", [])),
        "train_seconds": round(train_seconds, 1),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }
    for name, dataset in datasets.items():
        if config.mode == "stream" and name != "train":
            # the whole split as one stream, batch 1: no token lost at window or row edges
            metrics[name] = evaluate_stream_perplexity(
                stateless_copy(model), token_stream(splits[name])
            )
        else:
            metrics[name] = evaluate_perplexity(model, dataset)
    if splits["valid"]:
        with_eos = [ids + [3] for ids in splits["train"]], [ids + [3] for ids in splits["valid"]]
        metrics["unigram_valid_perplexity"] = vocabulary.unigram_perplexity(*with_eos)
    if not all(math.isfinite(metrics[name]["perplexity"]) for name in datasets):
        metrics["warning"] = "non-finite perplexity: training diverged"
    (output / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    return metrics


def load_run(directory) -> tuple[RNNLanguageModel, Vocabulary]:
    """The model and vocabulary of a run directory; a stateful model comes back stateless."""
    directory = Path(directory)
    for name in (MODEL_FILE, VOCAB_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a keras-rnnlm run: {name} is missing.")
    model = keras.saving.load_model(directory / MODEL_FILE)
    return stateless_copy(model), Vocabulary.load(directory / VOCAB_FILE)


def stateless_copy(model: RNNLanguageModel) -> RNNLanguageModel:
    """The same weights in a model that does not carry state across calls (any batch size)."""
    return model.clone_with(stateful=False) if model.stateful else model


def evaluate_text_file(directory, text_file, batch_size: int = 32) -> dict:
    """Perplexity of a run's model on a text file (sentence mode); also written to the run."""
    model, vocabulary = load_run(directory)
    sentences = encode_corpus(vocabulary, text_files_corpus(text_file).train)
    if not sentences:
        raise ValueError(f"{text_file} holds no text.")
    dataset = sentence_dataset(sentences, batch_size, shuffle=False, start_id=vocabulary.start_id)
    result = evaluate_perplexity(model, dataset)
    result["file"] = str(text_file)
    out = Path(directory) / f"evaluate_{Path(text_file).stem}.json"
    out.write_text(json.dumps(result, indent=2))
    return result
