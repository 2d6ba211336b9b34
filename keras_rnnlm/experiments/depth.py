"""Depth: how much gradient reaches each layer of a stacked recurrent language model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_rnnlm.losses import MaskedLanguageModelLoss


def layer_gradient_norms(model, inputs, targets) -> list[float]:
    """Norm of the loss gradient with respect to each recurrent layer's weights.

    Args:
        model: an ``RNNLanguageModel`` (any depth, cell, residual or not).
        inputs: int ``(batch, time)`` token ids.
        targets: int ``(batch, time)`` next-token ids (0: padding, not counted).

    Returns:
        For layers 1 (bottom) to ``num_layers`` (top), the global norm of the gradient of
        ``MaskedLanguageModelLoss`` with respect to all of that layer's weights (kernel,
        recurrent kernel, bias).

    Example:

    >>> layer_gradient_norms(model, inputs, targets)  # bottom layer first
    [0.031, 0.058, 0.12]
    """
    if not model.built:
        model.build((None, None))
    layers = model.rnn.rnn_layers
    weights = [layer.trainable_weights for layer in layers]
    with tf.GradientTape() as tape:
        loss = MaskedLanguageModelLoss()(targets, model(np.asarray(inputs)))
    grads = tape.gradient(loss, weights)
    return [float(tf.linalg.global_norm(g)) for g in grads]


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value) of ``values``."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
