"""Vanishing and exploding gradients at initialisation: measured ratios against their bounds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from keras_rnnlm.experiments.common import SETTINGS, single_layer_lm
from keras_rnnlm.gradients import gradient_norms_by_distance


def scaled_orthogonal_gradients(
    scales: Sequence[float] = (0.5, 0.9, 1.0, 1.1, 1.5),
    distances: Sequence[int] = (10, 30),
    units: int = 32,
    embedding_dim: int = 16,
    vocabulary_size: int = 20,
    batch_size: int = 16,
    seed: int = 0,
    dtype: str = "float64",
) -> list[dict]:
    """SimpleRNN with ``W_h = c * Q`` (``Q`` orthogonal): measured gradient ratios vs ``c^k``.

    Since ``dh^(s)/dh^(s-1) = diag(tanh') W_h^T`` and ``0 < tanh' <= 1``, every example's
    ``||dJ/dh^(t-k)|| <= c^k ||dJ/dh^(t)||`` (so also the batch-mean ratio). For ``c > 1`` the
    bound allows growth, but saturation (``tanh'`` near 0) may prevent it.

    Args:
        scales: the values of ``c``.
        distances: the ``k`` reported.
        units, embedding_dim, vocabulary_size: model size (one layer).
        batch_size: random token sequences of length ``max(distances) + 2``.
        seed: fixes ``Q``, the other weights and the tokens.
        dtype: computation dtype (float64 keeps tiny ratios exact).

    Returns:
        One row per ``(c, k)``: ``{"c", "k", "ratio", "bound", "within_bound",
        "mean_tanh_derivative"}``; the last is the mean ``1 - h^2`` over the sequence, which
        shows how saturated the units are.

    Example:

    >>> rows = scaled_orthogonal_gradients(scales=(0.9,), distances=(10,))
    >>> rows[0]["ratio"] <= rows[0]["bound"]
    True
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocabulary_size, size=(batch_size, max(distances) + 2))
    q = np.linalg.qr(rng.standard_normal((units, units)))[0]
    rows = []
    for c in scales:
        model = single_layer_lm(
            "simple_rnn", vocabulary_size, units, embedding_dim, seed, dtype=dtype
        )
        cell = model.rnn.rnn_layers[0].cell
        cell.recurrent_kernel.assign(c * q)
        norms = gradient_norms_by_distance(model, ids, max_distance=max(distances))
        hidden = model.rnn.rnn_layers[0](model.embedding(ids[:, :-1]))[0]
        tanh_derivative = float(np.mean(1.0 - np.square(np.asarray(hidden))))
        for k in distances:
            ratio = float(norms["h_ratio"][0, k])
            rows.append(
                {
                    "c": float(c),
                    "k": int(k),
                    "ratio": ratio,
                    "bound": float(c) ** k,
                    "within_bound": bool(ratio <= float(c) ** k * (1 + 1e-9)),
                    "mean_tanh_derivative": tanh_derivative,
                }
            )
    return rows


def gradient_ratio_table(
    cells: Sequence[str] = ("simple_rnn", "gru", "lstm"),
    settings: dict | None = None,
    distances: Sequence[int] = (10, 30),
    units: int = 64,
    embedding_dim: int = 16,
    vocabulary_size: int = 20,
    batch_size: int = 16,
    seed: int = 0,
) -> list[dict]:
    """Gradient ratios ``||dJ/ds^(t-k)|| / ||dJ/ds^(t)||`` at initialisation, per cell/setting.

    Args:
        cells: cell types.
        settings: ``{name: {"recurrent_initializer": "orthogonal" | "uniform_0.1" | any Keras
            initializer name, "forget_bias": float}}`` (default ``SETTINGS``; the forget bias
            only matters for LSTMs).
        distances: the ``k`` reported.
        units, embedding_dim, vocabulary_size: one-layer language model.
        batch_size: random token sequences.
        seed: fixes weights and tokens.

    Returns:
        One row per ``(setting, cell, k)``: ``{"setting", "cell", "k", "h_ratio", "c_ratio"
        (NaN except LSTM), "input_ratio"}``.
    """
    settings = SETTINGS if settings is None else settings
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocabulary_size, size=(batch_size, max(distances) + 2))
    rows = []
    for name, setting in settings.items():
        for cell in cells:
            if cell != "lstm" and setting.get("forget_bias", 1.0) != 1.0:
                continue  # identical to the b_f=1 row for SimpleRNN and GRU
            model = single_layer_lm(cell, vocabulary_size, units, embedding_dim, seed, **setting)
            norms = gradient_norms_by_distance(model, ids, max_distance=max(distances))
            for k in distances:
                rows.append(
                    {
                        "setting": name,
                        "cell": cell,
                        "k": int(k),
                        "h_ratio": float(norms["h_ratio"][0, k]),
                        "c_ratio": float(norms["c_ratio"][0, k]) if "c" in norms else math.nan,
                        "input_ratio": float(norms["input_ratio"][k]),
                    }
                )
    return rows
