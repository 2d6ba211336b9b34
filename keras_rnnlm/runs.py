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

from keras_rnnlm.checkpoints import ResumableCheckpoint, atomic_save_model, atomic_write_text
from keras_rnnlm.data.corpora import Corpus, load_corpus, text_files_corpus
from keras_rnnlm.data.pipelines import (
    encode_corpus,
    sentence_dataset,
    sentence_epochs,
    stream_dataset,
    token_stream,
)
from keras_rnnlm.data.vocabulary import BOS, EOS, Vocabulary
from keras_rnnlm.distribute import STRATEGIES, get_strategy
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.training import (
    CLIPPING,
    OPTIMIZERS,
    PRESETS,
    EpochDecay,
    ResetStatesCallback,
    StopOnDivergence,
    compile_language_model,
    evaluate_perplexity,
    evaluate_stream_perplexity,
)

MODEL_FILE, VOCAB_FILE, METRICS_FILE, CONFIG_FILE, CHECKPOINT_FILE, BACKUP_DIR = (
    "model.keras",
    "vocabulary.json",
    "metrics.json",
    "config.json",
    "checkpoint.keras",  # the model after the last completed epoch
    "backup",  # the resumable training state (keras_rnnlm.checkpoints), removed when done
)
RESUMABLE_FIELDS_IGNORED = ("overwrite", "verbose")  # may differ when a run is resumed


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/infinite or exploded; the last good checkpoint is kept."""


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
    strategy: str = "default"  # default | mirrored | multi_worker | tpu (keras_rnnlm.distribute)
    encoding_errors: str = "strict"  # text files that are not UTF-8: strict (fail) | replace
    seed: int = 0
    output: str = "rnnlm_run"
    overwrite: bool = False
    verbose: int = 1

    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the first setting that cannot work."""
        positive = ("num_layers", "units", "embedding_dim", "batch_size", "num_steps", "epochs")
        for name in positive + ("max_length", "steps_per_epoch", "max_vocabulary_size"):
            value = getattr(self, name)
            if value is None and name in ("max_length", "steps_per_epoch"):
                continue
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        choices = {
            "mode": ("sentence", "stream"),
            "strategy": STRATEGIES,
            "encoding_errors": ("strict", "replace"),
            "optimizer": OPTIMIZERS,
            "clipping": CLIPPING,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.jit_compile not in (True, False, "recurrence"):
            raise ValueError(
                f'jit_compile must be True, False or "recurrence", got {self.jit_compile!r}.'
            )
        if self.output_dtype not in ("float32", "bfloat16"):
            raise ValueError(
                f'output_dtype must be "float32" or "bfloat16", got {self.output_dtype!r}.'
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        return self

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
            config.train_file,
            config.valid_file,
            config.test_file,
            level=config.level or "word",
            errors=config.encoding_errors,
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


def _check_resumable(output: Path, config: TrainConfig) -> None:
    """An interrupted run in ``output`` may only be resumed by the same configuration."""
    saved_file = output / CONFIG_FILE
    if not saved_file.exists():
        raise ValueError(f"{output / BACKUP_DIR} holds a checkpoint but {saved_file} is missing.")
    saved = json.loads(saved_file.read_text())
    current = dataclasses.asdict(config)
    changed = sorted(
        k for k in current if k not in RESUMABLE_FIELDS_IGNORED and saved.get(k) != current[k]
    )
    if changed:
        raise ValueError(
            f"{output} holds an interrupted run with a different configuration ({', '.join(changed)} "
            "differ); rerun the same command to resume it, or pass --overwrite to start over, "
            "or choose another --output."
        )


def train(config: TrainConfig, callbacks: list | None = None) -> dict:
    """Train, evaluate and save a language model; returns the metrics written to metrics.json.

    Rerunning an interrupted run (same configuration, same ``output``) resumes it from its last
    completed epoch and ends as the uninterrupted run would (``keras_rnnlm.checkpoints``).
    ``callbacks`` are added to ``fit``'s.

    Raises:
        ValueError: a setting or the data cannot work (the message names it).
        FileExistsError: ``output`` is a file, or holds a finished run (without ``overwrite``).
        TrainingDivergedError: the loss became NaN or exploded (advice in the message).
    """
    config.validate()
    output = Path(config.output)
    _check_output_dir(output, config.overwrite)
    checkpoint = ResumableCheckpoint(output / BACKUP_DIR, delete_on_success=True)
    if config.overwrite:
        checkpoint.path.unlink(missing_ok=True)
    first_epoch = checkpoint.completed_epochs()
    if first_epoch:
        _check_resumable(output, config)
    strategy = get_strategy(config.strategy)
    multi_replica = strategy.num_replicas_in_sync > 1
    if multi_replica and config.mode == "stream":
        raise ValueError(
            "stream mode keeps one recurrent state per batch row on one device; train it with "
            "--strategy default, or use --mode sentence with several replicas."
        )
    keras.utils.set_random_seed(config.seed)

    corpus = load_config_corpus(config)
    vocabulary = build_vocabulary(corpus, config)
    splits = {
        name: encode_corpus(vocabulary, corpus.split(name)) for name in ("train", "valid", "test")
    }
    if not splits["train"]:
        raise ValueError(
            f"The training split of {corpus.name!r} holds no text (empty or blank lines only)."
        )
    datasets = {n: make_dataset(s, config, training=False) for n, s in splits.items() if s}
    steps_per_epoch = config.steps_per_epoch
    if config.mode == "sentence":
        train_data, steps_per_epoch = sentence_epochs(
            splits["train"],
            config.batch_size,
            config.max_length,
            seed=config.seed,
            first_epoch=first_epoch,
            steps_per_epoch=config.steps_per_epoch,
        )
    elif config.steps_per_epoch:  # slices of the repeated stream
        train_data = datasets["train"].repeat().skip(first_epoch * config.steps_per_epoch)
    else:
        train_data = datasets["train"]

    with strategy.scope():
        model = build_model(config, vocabulary.size)
        compile_language_model(
            model,
            config.optimizer,
            config.learning_rate,
            config.clip_norm,
            config.clipping,
            level=corpus.level,
            # XLA cannot compile a step whose variables live on several devices; TPUs compile
            jit_compile=(
                config.jit_compile if not multi_replica or config.strategy == "tpu" else False
            ),
        )
    output.mkdir(parents=True, exist_ok=True)
    if not first_epoch:
        vocabulary.save(output / VOCAB_FILE)
        atomic_write_text(output / CONFIG_FILE, json.dumps(dataclasses.asdict(config), indent=2))

    divergence = StopOnDivergence()
    callbacks = [
        divergence,
        checkpoint,
        SaveModelEachEpoch(output / CHECKPOINT_FILE),
        *(callbacks or []),
    ]
    if config.mode == "stream":
        callbacks.append(ResetStatesCallback())
    if config.decay_start_epoch is not None:
        schedule = EpochDecay(config.learning_rate, config.decay_start_epoch, config.decay_factor)
        callbacks.append(keras.callbacks.LearningRateScheduler(schedule))
    start = time.time()
    model.fit(
        train_data,
        validation_data=datasets.get("valid"),
        epochs=config.epochs,
        initial_epoch=first_epoch,
        steps_per_epoch=steps_per_epoch,
        callbacks=callbacks,
        verbose=config.verbose,
    )
    train_seconds = time.time() - start
    if divergence.stopped_at is not None:
        raise TrainingDivergedError(
            f"{divergence.message} The last good epoch is kept in {output / CHECKPOINT_FILE} "
            f"(and {checkpoint.path}, from which the same command resumes)."
        )
    atomic_save_model(model, output / MODEL_FILE)

    metrics = {
        "corpus": corpus.name,
        "level": corpus.level,
        "mode": config.mode,
        "vocabulary_size": vocabulary.size,
        "epochs_run": len(checkpoint.history.get("loss", [])),
        "resumed_at_epoch": first_epoch,
        "replicas": strategy.num_replicas_in_sync,
        "train_seconds": round(train_seconds, 1),
        "history": checkpoint.history,
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
    atomic_write_text(output / METRICS_FILE, json.dumps(metrics, indent=2))
    return metrics


class SaveModelEachEpoch(keras.callbacks.Callback):
    """Write the model to ``path`` (atomically) after every epoch whose loss is finite."""

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and math.isfinite(float(loss)):
            atomic_save_model(self.model, self.path)


def load_run(directory) -> tuple[RNNLanguageModel, Vocabulary]:
    """The model and vocabulary of a run directory; a stateful model comes back stateless."""
    directory = Path(directory)
    for name in (MODEL_FILE, VOCAB_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a keras-rnnlm run: {name} is missing.")
    model = keras.saving.load_model(directory / MODEL_FILE)
    vocabulary = Vocabulary.load(directory / VOCAB_FILE)
    if getattr(model, "vocabulary_size", vocabulary.size) != vocabulary.size:
        raise ValueError(
            f"{directory / VOCAB_FILE} has {vocabulary.size} tokens but the model in "
            f"{directory / MODEL_FILE} predicts {model.vocabulary_size}: they come from "
            "different runs."
        )
    return stateless_copy(model), vocabulary


def stateless_copy(model: RNNLanguageModel) -> RNNLanguageModel:
    """The same weights in a model that does not carry state across calls (any batch size)."""
    return model.clone_with(stateful=False) if model.stateful else model


def evaluate_text_file(directory, text_file, batch_size: int = 32) -> dict:
    """Perplexity of a run's model on a text file (sentence mode); also written to the run."""
    model, vocabulary = load_run(directory)
    lines = text_files_corpus(text_file).train
    sentences = [ids for ids in vocabulary.encode_batch(lines) if ids]  # one tokenizer call
    if not sentences:
        raise ValueError(f"{text_file} holds no text.")
    dataset = sentence_dataset(sentences, batch_size, shuffle=False, start_id=vocabulary.start_id)
    result = evaluate_perplexity(model, dataset)
    result["file"] = str(text_file)
    out = Path(directory) / f"evaluate_{Path(text_file).stem}.json"
    out.write_text(json.dumps(result, indent=2))
    return result
