"""Gradient clipping: one SimpleRNN language model trained with large SGD steps, three ways."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_rnnlm.data.pipelines import prefetched, stream_batches, token_stream
from keras_rnnlm.experiments.common import copy_with_weights
from keras_rnnlm.gradients import GradientNormMonitor
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.tasks import MarkovSource
from keras_rnnlm.training import compile_language_model


class _StepLosses(keras.callbacks.Callback):
    """Per-step training loss, recovered from Keras's running epoch mean (equal batches)."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_epoch_begin(self, epoch, logs=None):
        self._previous_mean, self._count = 0.0, 0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self._count += 1
        self.losses.append(self._count * mean - (self._count - 1) * self._previous_mean)
        self._previous_mean = mean


def clipping_experiment(
    learning_rates: Sequence[float] = (1.0, 2.0, 4.0),
    modes: Sequence[str] = ("none", "global", "per_variable"),
    clip_norm: float = 1.0,
    units: int = 64,
    embedding_dim: int = 32,
    num_sentences: int = 2000,
    batch_size: int = 16,
    num_steps: int = 20,
    epochs: int = 2,
    seed: int = 0,
    jit_compile: bool = False,
) -> tuple[list[dict], dict]:
    """One SimpleRNN language model trained with SGD at large learning rates, three ways.

    Data: a ``MarkovSource`` token stream (``stream_batches``, fixed shapes). Each run starts
    from the same weights; the per-step gradient norm before clipping comes from
    ``GradientNormMonitor``. A run *diverged* if a step's loss is NaN/infinite or above twice
    the first step's loss (a transient spike counts); it *converged* if its last step's loss
    is finite and below the first step's (both can be true: a spike, then recovery).

    Args:
        learning_rates: SGD rates tried.
        modes: ``"none"``, ``"global"`` (``global_clipnorm``) and/or ``"per_variable"``
            (``clipnorm``).
        clip_norm: the threshold of both clipping modes.
        units, embedding_dim: one-layer SimpleRNN LM.
        num_sentences, batch_size, num_steps, epochs: data and training budget.
        seed: fixes data and initial weights.
        jit_compile: compile the train step with XLA (slower to compile, faster per step).

    Returns:
        ``(rows, traces)``: one row per ``(learning_rate, mode)`` with ``{"learning_rate",
        "clipping", "initial_loss", "final_loss", "max_loss", "diverged", "diverged_at_step", "converged",
        "max_grad_norm", "median_grad_norm", "clipped_fraction", "source_entropy"}`` (the
        best achievable loss per token, for reference), and ``traces[(learning_rate,
        mode)] = {"loss": [...], "grad_norm": [...], "clipped": [...]}`` per step.
    """
    source = MarkovSource(num_symbols=10, end_probability=0.1, concentration=0.3, seed=seed)
    stream = token_stream(source.sample(num_sentences, seed=seed))
    inputs, targets = stream_batches(stream, batch_size, num_steps)
    dataset = prefetched(tf.data.Dataset.from_tensor_slices((inputs, targets)))
    keras.utils.set_random_seed(seed)
    base = RNNLanguageModel(
        source.vocabulary_size,
        cell="simple_rnn",
        num_layers=1,
        units=units,
        embedding_dim=embedding_dim,
    )
    base(inputs[0])
    initial_weights = base.get_weights()
    rows, traces = [], {}
    for lr in learning_rates:
        for mode in modes:
            keras.utils.set_random_seed(seed)
            model = copy_with_weights(base, inputs[0], initial_weights)
            compile_language_model(
                model,
                "sgd",
                learning_rate=lr,
                clip_norm=clip_norm,
                clipping=mode,
                jit_compile=jit_compile,
            )
            monitor, step_losses = GradientNormMonitor(), _StepLosses()
            with np.errstate(all="ignore"):
                model.fit(
                    dataset,
                    epochs=epochs,
                    verbose=0,
                    shuffle=False,
                    callbacks=[monitor, step_losses],
                )
            losses = np.array(step_losses.losses)
            bad = ~np.isfinite(losses) | (losses > 2.0 * losses[0])
            norms = np.array(monitor.history["grad_norm"])
            finite_norms = norms[np.isfinite(norms)]
            rows.append(
                {
                    "learning_rate": float(lr),
                    "clipping": mode,
                    "initial_loss": float(losses[0]),
                    "final_loss": float(losses[-1]),
                    "max_loss": float(np.nanmax(np.where(np.isfinite(losses), losses, np.nan)))
                    if np.isfinite(losses).any()
                    else math.nan,
                    "diverged": bool(bad.any()),
                    "diverged_at_step": int(np.argmax(bad)) + 1 if bad.any() else None,
                    "converged": bool(np.isfinite(losses[-1]) and losses[-1] < losses[0]),
                    "max_grad_norm": float(norms.max()) if norms.size else math.nan,
                    "median_grad_norm": float(np.median(finite_norms))
                    if finite_norms.size
                    else math.nan,
                    "clipped_fraction": float(np.mean(monitor.history["clipped"])),
                    "source_entropy": source.entropy_per_token(),
                }
            )
            traces[(float(lr), mode)] = {
                "loss": losses.tolist(),
                "grad_norm": monitor.history["grad_norm"],
                "clipped": monitor.history["clipped"],
            }
            keras.backend.clear_session()
    return rows, traces
