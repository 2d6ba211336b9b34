"""Gradient clipping on a real language model: plain SGD with a large step, by clip threshold."""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_rnnlm.data.pipelines import prefetched, stream_batches, token_stream
from keras_rnnlm.experiments.batch_loss import BatchLossRecorder
from keras_rnnlm.experiments.common import copy_with_weights
from keras_rnnlm.gradients import GradientNormMonitor
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.training import compile_language_model


def clip_threshold_sweep(
    sentences: Sequence[Sequence[int]],
    vocabulary_size: int,
    learning_rate: float = 20.0,
    thresholds: Sequence[float | None] = (None, 0.25, 1.0, 5.0),
    cell: str = "simple_rnn",
    units: int = 128,
    embedding_dim: int = 64,
    batch_size: int = 16,
    num_steps: int = 35,
    max_steps: int | None = 150,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """Train one LM from the same initial weights with SGD, without and with global clipping.

    Args:
        sentences: real text as id lists (``encode_corpus``), read as one stream (``<eos>``
            between sentences) in ``batch_size`` rows of ``num_steps``-token windows.
        vocabulary_size: ids of the vocabulary, padding included.
        learning_rate: the plain-SGD step size, large on purpose.
        thresholds: global-norm clip thresholds; ``None`` trains without clipping.
        cell, units, embedding_dim: the one-layer language model.
        batch_size, num_steps: stream batches (the model is stateless; every window starts
            from a zero state).
        max_steps: updates per run (None: one pass over the stream).
        seed: initial weights (shared by every run).

    Returns:
        ``(rows, traces)``: one row per threshold with ``threshold`` (None: no clipping),
        ``initial_loss`` and ``final_loss`` (first and last batch's own loss),
        ``best_loss``, ``max_loss`` (over finite losses), ``nan`` (a loss became NaN/inf),
        ``spike`` (a loss above twice the first one, or NaN), ``max_grad_norm`` and
        ``clipped_fraction``; ``traces[threshold] = {"loss": [...], "grad_norm": [...]}``.

    Example:

    >>> rows, traces = clip_threshold_sweep(train_ids[:3000], vocab.size, learning_rate=20)
    """
    inputs, targets = stream_batches(token_stream(sentences), batch_size, num_steps)
    if max_steps is not None:
        inputs, targets = inputs[:max_steps], targets[:max_steps]
    dataset = prefetched(tf.data.Dataset.from_tensor_slices((inputs, targets)))
    keras.utils.set_random_seed(seed)
    base = RNNLanguageModel(
        vocabulary_size, cell=cell, num_layers=1, units=units, embedding_dim=embedding_dim
    )
    base(inputs[0])
    initial_weights = base.get_weights()
    rows, traces = [], {}
    for threshold in thresholds:
        model = copy_with_weights(base, inputs[0], initial_weights)
        compile_language_model(
            model,
            "sgd",
            learning_rate=learning_rate,
            clip_norm=threshold,
            clipping="global" if threshold is not None else "none",
            jit_compile=False,
        )
        monitor, recorder = GradientNormMonitor(), BatchLossRecorder()
        with np.errstate(all="ignore"):
            model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[monitor, recorder])
        losses = np.array(recorder.losses)
        finite = losses[np.isfinite(losses)]
        norms = np.array(monitor.history["grad_norm"], np.float64)
        rows.append(
            {
                "threshold": threshold,
                "initial_loss": float(losses[0]),
                "final_loss": float(losses[-1]),
                "best_loss": float(finite.min()) if finite.size else math.nan,
                "max_loss": float(finite.max()) if finite.size else math.nan,
                "nan": bool((~np.isfinite(losses)).any()),
                "spike": bool((~np.isfinite(losses) | (losses > 2 * losses[0])).any()),
                "max_grad_norm": float(np.nanmax(norms)) if np.isfinite(norms).any() else math.nan,
                "clipped_fraction": float(np.mean(monitor.history["clipped"])),
            }
        )
        traces[threshold] = {"loss": losses.tolist(), "grad_norm": norms.tolist()}
        keras.backend.clear_session()
    return rows, traces
