"""A training run: corpus -> vocabulary -> tf.data -> ``model.fit`` -> files in a directory.

``train(config)`` trains, evaluates and saves; an interrupted run resumes where it stopped
(``keras_rnnlm.checkpoints``). ``keras_rnnlm.runs`` re-exports every name.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import keras

from keras_rnnlm.checkpoints import ResumableCheckpoint, atomic_save_model, atomic_write_text
from keras_rnnlm.data.pipelines import encode_corpus, sentence_epochs, token_stream
from keras_rnnlm.data.vocabulary import EOS_ID
from keras_rnnlm.distribute import get_strategy
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
    if multi_replica and config.mode == "stream":  # each replica carries its rows' states
        from keras_rnnlm.distributed_stream import check_stream_batch

        check_stream_batch(config.batch_size, strategy.num_replicas_in_sync)
    if multi_replica and config.tensorboard:  # GradientNormMonitor records one replica's norm
        raise ValueError(
            "--tensorboard measures the gradient norm on one device; train with "
            "--strategy default, or drop --tensorboard with several replicas."
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
    # after the checkpoint: metrics.json's history is the same with or without --tensorboard
    summaries = TrainingSummaries(config.tensorboard).callbacks() if config.tensorboard else []
    callbacks = [
        divergence,
        checkpoint,
        SaveModelEachEpoch(output / CHECKPOINT_FILE),
        *summaries,
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
        shuffle=False,  # a tf.data pipeline: sentence_epochs shuffles, streams keep order
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
        with_eos = (
            [ids + [EOS_ID] for ids in splits["train"]],
            [ids + [EOS_ID] for ids in splits["valid"]],
        )
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
