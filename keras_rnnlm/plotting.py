"""Matplotlib figures of the gradient diagnostics (``keras_rnnlm.gradients``).

* ``plot_norms_by_distance``: gradient norm (or its ratio to distance 0) against the distance
  ``k`` back in time, log scale, with optional ``c^k`` bounds.
* ``plot_gradient_norm_trace``: the global gradient norm before clipping per training step
  (``GradientNormMonitor``), with the clipping threshold and an optional loss panel.

matplotlib is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plot_norms_by_distance(
    norms: dict | Sequence[tuple[str, dict]],
    key: str = "h",
    layer: int = -1,
    ratio: bool = True,
    bounds: dict | None = None,
    ax=None,
):
    """Log-scale plot of gradient norm (or ratio to ``k = 0``) against distance ``k``.

    Args:
        norms: one result of ``gradient_norms_by_distance``, or a list of ``(label, result)``.
        key: ``"h"``, ``"c"`` or ``"input"``.
        layer: which layer for ``"h"``/``"c"``.
        ratio: plot ``||g_k|| / ||g_0||`` (True) or the raw norms.
        bounds: optional ``{label: c}``: also draw ``c^k`` dashed (the SimpleRNN bound).
        ax: optional matplotlib axes.

    Returns:
        The matplotlib axes.

    Example:

    >>> plot_norms_by_distance([("lstm", lstm_norms), ("rnn", rnn_norms)], key="h")
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    items = [("", norms)] if isinstance(norms, dict) else list(norms)
    for label, result in items:
        values = result[f"{key}_ratio" if ratio else key]
        if values.ndim == 2:
            values = values[layer]
        ax.semilogy(result["distance"], values, label=label or key)
    for label, c in (bounds or {}).items():
        k = items[0][1]["distance"]
        ax.semilogy(k, float(c) ** k, "--", color="gray", linewidth=1, label=label)
    ax.set_xlabel("distance k")
    ax.set_ylabel(f"||dJ/d{key}^(t-k)||" + (" / ||dJ/d" + key + "^(t)||" if ratio else ""))
    if any(label for label, _ in items) or bounds:
        ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return ax


def plot_gradient_norm_trace(
    traces: dict, clip_norm: float | None = None, losses: dict | None = None, ax=None
):
    """Gradient norm (before clipping) per training step, log scale; optional loss panel.

    Args:
        traces: ``{label: sequence of per-step norms}`` (e.g. ``monitor.history["grad_norm"]``).
        clip_norm: optional threshold drawn as a horizontal line.
        losses: optional ``{label: per-step losses}``, drawn in a second panel.
        ax: optional axes (one, or two when ``losses`` is given).

    Returns:
        The matplotlib axes (a tuple of two when ``losses`` is given).
    """
    import matplotlib.pyplot as plt

    panels = 2 if losses else 1
    if ax is None:
        _, ax = plt.subplots(1, panels, figsize=(6 * panels, 4))
    axes = tuple(np.atleast_1d(ax))
    for label, values in traces.items():
        axes[0].semilogy(np.arange(1, len(values) + 1), values, label=label)
    if clip_norm is not None:
        axes[0].axhline(clip_norm, color="gray", linestyle="--", label="clip norm")
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel("global gradient norm before clipping")
    axes[0].legend(fontsize="small")
    if losses:
        for label, values in losses.items():
            axes[1].plot(np.arange(1, len(values) + 1), values, label=label)
        axes[1].set_xlabel("training step")
        axes[1].set_ylabel("training loss")
        axes[1].set_yscale("log")
        axes[1].legend(fontsize="small")
    return axes if losses else axes[0]
