"""What a training run is made of: its configuration, files, vocabulary, data and model.

``TrainConfig`` holds every setting (``keras-rnnlm train``'s flags; ``from_preset`` gives the
PTB settings of Zaremba et al. 2014); the functions below turn it into the run's corpus,
vocabulary, ``tf.data`` pipelines and model. ``keras_rnnlm.run_training.train`` runs it;
``keras_rnnlm.runs`` re-exports every name.
"""

import dataclasses

from keras_rnnlm.data.corpora import Corpus, load_corpus, text_files_corpus
from keras_rnnlm.data.pipelines import document_stream_dataset, sentence_dataset, stream_dataset
from keras_rnnlm.data.vocabulary import BOS, EOS, Vocabulary
from keras_rnnlm.distribute import STRATEGIES
from keras_rnnlm.models import OUTPUT_DTYPES, RNNLanguageModel
from keras_rnnlm.training import CLIPPING, OPTIMIZERS, PRESETS

MODEL_FILE, VOCAB_FILE, METRICS_FILE, CONFIG_FILE, CHECKPOINT_FILE, BACKUP_DIR = (
    "model.keras",
    "vocabulary.json",
    "metrics.json",
    "config.json",
    "checkpoint.keras",  # the model after the last completed epoch
    "backup",  # the resumable training state (keras_rnnlm.checkpoints), removed when done
)
# may differ when a run is resumed (they change what is shown or logged, not what is trained)
RESUMABLE_FIELDS_IGNORED = ("overwrite", "verbose", "tensorboard")


MODES = ("sentence", "stream")  # sentence batches | one token stream (truncated BPTT)
ENCODING_ERRORS = ("strict", "replace")  # text files that are not UTF-8: fail | U+FFFD
JIT_COMPILE_OPTIONS = (True, False, "auto", "recurrence")  # see compile_language_model


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
    # stream mode: "blank" (blank lines) or a token (lines holding only it) separate documents;
    # each row's states are zeroed at every document start, in training and evaluation
    document_boundary: str | None = None
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
    # "auto": the fastest correct implementation (keras_rnnlm.fast: graph step, XLA time loops,
    # fused output layer + loss); True: the reference path with the whole step XLA-compiled;
    # False: the reference path in graph mode; "recurrence": the fast path, spelled as before
    jit_compile: bool | str = "auto"
    # "auto": bfloat16 output-layer matmuls in training where the device runs them fast
    # (keras_rnnlm.fast.bf16_matmul_is_fast), float32 elsewhere; "float32" / "bfloat16" force it
    output_dtype: str = "auto"
    strategy: str = "default"  # default | mirrored | multi_worker | tpu (keras_rnnlm.distribute)
    # split the CPU into this many logical devices (replicas of --strategy mirrored without
    # GPUs); set before TensorFlow initialises its devices (keras_rnnlm.distribute)
    cpu_devices: int | None = None
    encoding_errors: str = "strict"  # text files that are not UTF-8: strict (fail) | replace
    seed: int = 0
    output: str = "rnnlm_run"
    overwrite: bool = False
    verbose: int = 1
    tensorboard: str | None = None  # TensorBoard directory (keras_rnnlm.summaries)

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
            "mode": MODES,
            "strategy": STRATEGIES,
            "encoding_errors": ENCODING_ERRORS,
            "optimizer": OPTIMIZERS,
            "clipping": CLIPPING,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.cpu_devices is not None:
            if (
                not isinstance(self.cpu_devices, int)
                or isinstance(self.cpu_devices, bool)
                or self.cpu_devices < 1
            ):
                raise ValueError(
                    f"cpu_devices must be a positive integer, got {self.cpu_devices!r}."
                )
            if self.strategy != "mirrored":
                raise ValueError(
                    "cpu_devices splits the CPU into the replicas of strategy 'mirrored'; got "
                    f"strategy {self.strategy!r} (pass --strategy mirrored)."
                )
        if self.jit_compile not in JIT_COMPILE_OPTIONS:
            raise ValueError(
                f"jit_compile must be one of {JIT_COMPILE_OPTIONS}, got {self.jit_compile!r}."
            )
        if self.output_dtype not in OUTPUT_DTYPES:
            raise ValueError(
                f"output_dtype must be one of {OUTPUT_DTYPES}, got {self.output_dtype!r}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.document_boundary is not None:
            if self.mode != "stream":
                raise ValueError(
                    "document_boundary needs mode='stream' (sentence mode already reads every "
                    "sentence from zero states)."
                )
            if not str(self.document_boundary).strip():
                raise ValueError("document_boundary must be 'blank' or a non-empty token.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}.")
        return self

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "TrainConfig":
        """PTB settings of Zaremba et al. 2014 (``small``/``medium``/``large``), stream mode.

        Like every run, the presets train with ``jit_compile="auto"`` and
        ``output_dtype="auto"``: on the from-scratch layers the fast path (graph-mode step,
        XLA time loops with a hand-written backward, output layer fused with the loss), with
        bfloat16 output matmuls where the device runs them fast (see benchmarks/RESULTS.md).
        Override ``jit_compile=True, output_dtype="float32"`` for the reference path with the
        whole step XLA-compiled.
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
        values.update(overrides)
        return cls(**values)


def load_config_corpus(config: TrainConfig) -> Corpus:
    """The run's corpus: ``config.train_file`` (and valid/test files) or the named corpus."""
    if config.train_file:
        return text_files_corpus(
            config.train_file,
            config.valid_file,
            config.test_file,
            level=config.level or "word",
            errors=config.encoding_errors,
        )
    return load_corpus(
        config.corpus,
        config.manual_dir,
        config.data_dir,
        config.level,
        documents=config.document_boundary is not None,
    )


def build_vocabulary(corpus: Corpus, config: TrainConfig) -> Vocabulary:
    """The vocabulary of ``corpus``'s training split; sentences start with ``<eos>`` in
    stream mode (one token stream) and with ``<bos>`` in sentence mode."""
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


def make_dataset(sentences, config: TrainConfig, training: bool, documents=None):
    """The ``tf.data`` pipeline of a split for the run's mode (``documents``: the split's
    documents when ``config.document_boundary`` is set)."""
    if config.mode == "stream" and documents is not None:
        return document_stream_dataset(documents, config.batch_size, config.num_steps)
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
    """The run's ``RNNLanguageModel``, built (stateful with a fixed batch in stream mode)."""
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


def stateless_copy(model: RNNLanguageModel) -> RNNLanguageModel:
    """The same weights in a model that does not carry state across calls (any batch size)."""
    return model.clone_with(stateful=False) if model.stateful else model
