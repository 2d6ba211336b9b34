"""A training run: corpus -> vocabulary -> tf.data -> ``model.fit`` -> files in a directory.

``train(config)`` trains, evaluates and saves; an interrupted run resumes where it stopped
(``keras_rnnlm.checkpoints``). ``keras_rnnlm.runs`` re-exports every name.
"""

import dataclasses
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf

from keras_rnnlm.checkpoints import (
    CheckpointMismatchError,
    ResumableCheckpoint,
    atomic_save_model,
    atomic_write_text,
)
from keras_rnnlm.data.corpora import strip_document_boundaries
from keras_rnnlm.data.pipelines import (
    document_stream,
    encode_corpus,
    encode_documents,
    sentence_epochs,
    stream_batches,
    token_stream,
)
from keras_rnnlm.data.vocabulary import EOS_ID
from keras_rnnlm.distribute import (
    configure_cpu_devices,
    get_strategy,
    is_chief,
    num_workers,
    replicas_agree,
)
from keras_rnnlm.distributed_stream import (
    check_stream_batch,
    distribute_stream_dataset,
    single_device_copy,
)
from keras_rnnlm.run_config import (
    BACKUP_DIR,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RESUMABLE_FIELDS_IGNORED,
    VOCAB_FILE,
    TrainConfig,
    build_model,
    build_vocabulary,
    load_config_corpus,
    make_dataset,
    stateless_copy,
)
from keras_rnnlm.summaries import TrainingSummaries
from keras_rnnlm.training import (
    EpochDecay,
    ResetStatesCallback,
    StopOnDivergence,
    compile_language_model,
    evaluate_perplexity,
    evaluate_stream_perplexity,
)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/infinite or exploded; the last good checkpoint is kept."""


class TrainingCrashedError(RuntimeError):
    """``fit`` failed (a device, the step, or a multi-worker run's peer): not a bad setting.
    The last completed epoch is kept; the same command resumes from it."""


def _error_line(error: BaseException) -> str:
    """One line saying what ``error`` is: its first line, or for TensorFlow's "Graph execution
    error:" (a header, then the op's stack) the first unindented line after it: the cause."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    if lines[0].rstrip().endswith(":"):
        causes = [line for line in lines[1:] if not line[0].isspace()]
        causes = [line for line in causes if not line.startswith("Detected at node")]
        if causes:
            return f"{lines[0].strip()} {causes[0].strip()[:300]}"
    return lines[0].strip()


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
        TrainingCrashedError: ``fit`` failed otherwise (a device, or a worker of a
            multi-worker run); the same command resumes from the last completed epoch.

    On ``strategy="multi_worker"`` every worker calls ``train`` with the same configuration;
    only the chief (``keras_rnnlm.distribute.is_chief``) writes ``output``, and every worker
    resumes from the chief's backup there (``output`` on a filesystem all workers read).
    """
    config.validate()
    if config.strategy != "multi_worker" or is_chief():
        return _train(config, Path(config.output), callbacks)
    # a non-chief worker trains alike (it takes part in every collective) but writes to a
    # temporary directory, deleted at the end: only the chief writes the run (Keras's pattern)
    scratch = Path(tempfile.mkdtemp(prefix="keras_rnnlm_worker_"))
    try:
        return _train(config, scratch, callbacks)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _start_strategy(config: TrainConfig, first_epoch: int) -> tf.distribute.Strategy:
    """The run's strategy (the CPU split first with ``cpu_devices``), announced; refuses a
    global batch the replicas cannot share and workers that would resume differently."""
    if config.cpu_devices is not None:
        configure_cpu_devices(config.cpu_devices)
    strategy = get_strategy(config.strategy)
    replicas, workers = strategy.num_replicas_in_sync, num_workers(strategy)
    print(f"Strategy {config.strategy}: {replicas} replica(s) on {workers} worker(s)")
    if replicas == 1 and config.strategy != "default":
        print(
            f"keras-rnnlm: --strategy {config.strategy} found one device: training on 1 "
            "replica (without GPUs, --cpu-devices N splits the CPU into N replicas)",
            file=sys.stderr,
        )
    if config.batch_size % replicas:
        raise ValueError(
            f"batch_size {config.batch_size} is the global batch, split over {replicas} "
            f"replicas: it must be a multiple of {replicas}."
        )
    if workers > 1 and not replicas_agree(strategy, first_epoch):
        raise ValueError(
            f"The workers would resume from different epochs (this one: {first_epoch}): every "
            f"worker must read the chief's {Path(config.output) / BACKUP_DIR} (a shared "
            "filesystem), or none may hold a backup."
        )
    return strategy


def _train(config: TrainConfig, write_dir: Path, callbacks: list | None) -> dict:
    """``train`` writing the run's files to ``write_dir`` (a scratch directory on a
    multi-worker run's non-chief workers); the run is read from ``config.output``."""
    output = Path(config.output)
    _check_output_dir(output, config.overwrite)
    checkpoint = ResumableCheckpoint(
        write_dir / BACKUP_DIR, delete_on_success=True, restore_directory=output / BACKUP_DIR
    )
    if config.overwrite and write_dir == output:
        checkpoint.path.unlink(missing_ok=True)
    first_epoch = 0 if config.overwrite else checkpoint.completed_epochs()
    if first_epoch:
        _check_resumable(output, config)
    strategy = _start_strategy(config, first_epoch)
    multi_replica = strategy.num_replicas_in_sync > 1
    if multi_replica and config.mode == "stream":  # each replica carries its rows' states
        check_stream_batch(config.batch_size, strategy.num_replicas_in_sync)
    if multi_replica and config.tensorboard:  # GradientNormMonitor records one replica's norm
        raise ValueError(
            "--tensorboard measures the gradient norm on one device; train with "
            "--strategy default, or drop --tensorboard with several replicas."
        )
    keras.utils.set_random_seed(config.seed)

    raw_corpus = load_config_corpus(config)
    boundary = config.document_boundary
    corpus = strip_document_boundaries(raw_corpus, boundary) if boundary else raw_corpus
    vocabulary = build_vocabulary(corpus, config)
    splits = {
        name: encode_corpus(vocabulary, corpus.split(name)) for name in ("train", "valid", "test")
    }
    documents = {
        name: encode_documents(vocabulary, raw_corpus.split(name), boundary)
        for name in (("train", "valid", "test") if boundary else ())
    }
    if not splits["train"]:
        raise ValueError(
            f"The training split of {corpus.name!r} holds no text (empty or blank lines only)."
        )
    datasets = {
        n: make_dataset(s, config, training=False, documents=documents.get(n))
        for n, s in splits.items()
        if s
    }
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
    elif config.strategy == "multi_worker" and not documents:  # rows, not batches, per worker
        # (one machine's MirroredStrategy splits each global batch into row blocks already)
        train_data = distribute_stream_dataset(
            strategy,
            *stream_batches(token_stream(splits["train"]), config.batch_size, config.num_steps),
            repeat=bool(config.steps_per_epoch),
            skip_batches=first_epoch * (config.steps_per_epoch or 0),
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
    write_dir.mkdir(parents=True, exist_ok=True)
    if not first_epoch:
        vocabulary.save(write_dir / VOCAB_FILE)
        atomic_write_text(write_dir / CONFIG_FILE, json.dumps(dataclasses.asdict(config), indent=2))

    divergence = StopOnDivergence()
    # after the checkpoint: metrics.json's history is the same with or without --tensorboard
    summaries = TrainingSummaries(config.tensorboard).callbacks() if config.tensorboard else []
    callbacks = [
        divergence,
        checkpoint,
        SaveModelEachEpoch(write_dir / CHECKPOINT_FILE),
        *summaries,
        *(callbacks or []),
    ]
    if config.mode == "stream":
        callbacks.append(ResetStatesCallback())
    if config.decay_start_epoch is not None:
        schedule = EpochDecay(config.learning_rate, config.decay_start_epoch, config.decay_factor)
        callbacks.append(keras.callbacks.LearningRateScheduler(schedule))
    start = time.time()
    try:
        model.fit(
            train_data,
            validation_data=datasets.get("valid"),
            epochs=config.epochs,
            initial_epoch=first_epoch,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=config.verbose,
            shuffle=False,  # a tf.data pipeline: sentence_epochs shuffles, streams keep order
        )
    except CheckpointMismatchError:
        raise
    except Exception as error:  # not a setting: the step, the devices or a worker failed
        raise TrainingCrashedError(
            f"training stopped after {checkpoint.saved_epoch} completed epoch(s): "
            f"{type(error).__name__}: {_error_line(error)}. The same command resumes from the "
            f"last completed epoch ({output / BACKUP_DIR})"
            + (" when every worker reruns it." if config.strategy == "multi_worker" else ".")
        ) from error
    train_seconds = time.time() - start
    if divergence.stopped_at is not None:
        raise TrainingDivergedError(
            f"{divergence.message} The last good epoch is kept in {output / CHECKPOINT_FILE} "
            f"(and {checkpoint.path}, from which the same command resumes)."
        )
    atomic_save_model(model, write_dir / MODEL_FILE)

    metrics = {
        "corpus": corpus.name,
        "level": corpus.level,
        "mode": config.mode,
        "vocabulary_size": vocabulary.size,
        "epochs_run": len(checkpoint.history.get("loss", [])),
        "resumed_at_epoch": first_epoch,
        "replicas": strategy.num_replicas_in_sync,
        "workers": num_workers(strategy),
        "train_seconds": round(train_seconds, 1),
        "history": checkpoint.history,
    }
    for name, dataset in datasets.items():
        if config.mode == "stream" and name != "train":
            # the whole split as one stream, batch 1: no token lost at window or row edges
            stream, reset = (
                document_stream(documents[name])
                if documents
                else (token_stream(splits[name]), None)
            )
            metrics[name] = evaluate_stream_perplexity(stateless_copy(model), stream, reset=reset)
        else:  # on several workers a worker's carried states hold only its own rows
            metrics[name] = evaluate_perplexity(
                single_device_copy(model) if multi_replica and model.stateful else model, dataset
            )
    if splits["valid"]:
        with_eos = (
            [ids + [EOS_ID] for ids in splits["train"]],
            [ids + [EOS_ID] for ids in splits["valid"]],
        )
        metrics["unigram_valid_perplexity"] = vocabulary.unigram_perplexity(*with_eos)
    if not all(math.isfinite(metrics[name]["perplexity"]) for name in datasets):
        metrics["warning"] = "non-finite perplexity: training diverged"
    atomic_write_text(write_dir / METRICS_FILE, json.dumps(metrics, indent=2))
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
