"""Gradient diagnostics for recurrent language models: how gradients vanish or explode.

Back-propagation through time multiplies the gradient by one Jacobian per step::

    dJ/dh^(t-k) = dJ/dh^(t) . dh^(t)/dh^(t-1) ... dh^(t-k+1)/dh^(t-k)

For a SimpleRNN, ``dh^(s)/dh^(s-1) = diag(tanh'(a_s)) W_h^T`` has norm at most ``||W_h||``
(``tanh' <= 1``), so the gradient reaching distance ``k`` is at most ``||W_h||^k`` times the
gradient at distance 0. This module measures these quantities on any ``RNNLanguageModel``:

* ``gradient_norms_by_distance``: ``||dJ^(t)/dh^(t-k)||`` for every recurrent state (``h``; ``h``
  and the cell state ``c`` for LSTMs) of every layer, and ``||dJ^(t)/dx^(t-k)||`` for the input
  embedding, for ``k = 0..max_distance``.
* ``jacobian_spectrum``: largest singular value of the one-step state Jacobian along a sequence,
  and of the recurrent kernel ``W_h``.
* ``GradientNormMonitor``: a callback logging every training step's gradient norm *before*
  clipping and whether the optimizer's clipping fired.
* ``plot_norms_by_distance`` and ``plot_gradient_norm_trace``: matplotlib figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_rnnlm.layers import _as_list

_PACKAGE = "keras_rnnlm"


def _recurrent_cells(model):
    """The cells of ``model.rnn``, bottom layer first; rejects bidirectional stacks."""
    if getattr(model.rnn, "bidirectional", False):
        raise ValueError("Gradient diagnostics need a causal (not bidirectional) model.")
    return [layer.cell for layer in model.rnn.rnn_layers]


def _state_names(cell) -> list[str]:
    sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
    return ["h", "c"][: len(sizes)] if len(sizes) <= 2 else [f"s{i}" for i in range(len(sizes))]


def _check_ids(token_ids) -> np.ndarray:
    ids = np.asarray(token_ids)
    if ids.ndim != 2:
        raise ValueError(f"token_ids must be (batch, time), got shape {ids.shape}.")
    if np.any(ids == 0):
        raise ValueError(
            "token_ids contains padding (id 0); the diagnostics unroll unmasked sequences."
        )
    return ids.astype("int32")


def _lstm_step(cell, x, states, delta_c=None):
    """One LSTM step (Keras layout and gate order ``i, f, c, o``) with ``delta_c`` added to
    ``c_t`` *before* ``h_t = o * tanh(c_t)``, so that ``dJ/d(delta_c)`` is the total
    derivative ``dJ/dc_t`` (through ``h_t`` as well as through ``c_{t+1}``)."""
    h_prev, c_prev = states
    z = tf.matmul(x, cell.kernel) + tf.matmul(h_prev, cell.recurrent_kernel)
    if cell.use_bias:
        z = z + cell.bias
    z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
    c = tf.sigmoid(z_f) * c_prev + tf.sigmoid(z_i) * tf.tanh(z_c)
    if delta_c is not None:
        c = c + delta_c
    h = tf.sigmoid(z_o) * tf.tanh(c)
    return [h, c]


def last_position_loss(
    model: keras.Model,
    embedded: tf.Tensor,
    targets: tf.Tensor,
    state_perturbations: dict | None = None,
    input_perturbations: dict | None = None,
):
    """Sum over the batch of the loss ``J^(t)`` at the last position, unrolled step by step.

    The stacked cells of ``model`` are run one time step at a time in Python (no dropout, no
    mask), so that every intermediate state is a separate tensor. Perturbations are *added*
    to states and inputs, which makes ``dJ/d(perturbation)`` at zero equal to the total
    derivative ``dJ/dstate``: that is how ``gradient_norms_by_distance`` differentiates, and
    how a finite-difference check can evaluate ``J`` at a perturbed state.

    Args:
        model: an ``RNNLanguageModel`` (built, not bidirectional).
        embedded: ``(batch, time, embedding_dim)`` input embeddings ``x^(1..t)``.
        targets: int ``(batch,)``, the token to predict after the last position.
        state_perturbations: optional ``{(layer, step, state_index): tensor (batch, units)}``
            added to that state (``state_index`` 0 is ``h``, 1 is ``c`` for LSTMs; a
            perturbation of ``c_t`` is added before ``h_t = o * tanh(c_t)`` is computed).
        input_perturbations: optional ``{step: tensor (batch, embedding_dim)}`` added to
            ``x^(step)``.

    Returns:
        Scalar tensor: ``sum_b J_b^(t)`` (the per-example losses are independent, so the
        gradient of the sum holds every example's own gradient).
    """
    cells = _recurrent_cells(model)
    state_perturbations = state_perturbations or {}
    input_perturbations = input_perturbations or {}
    num_steps = embedded.shape[1]
    batch = tf.shape(embedded)[0]
    sequence = [
        embedded[:, t] + input_perturbations[t] if t in input_perturbations else embedded[:, t]
        for t in range(num_steps)
    ]
    for layer, cell in enumerate(cells):
        states = [
            tf.zeros((batch, size), dtype=embedded.dtype) for size in _as_list(cell.state_size)
        ]
        outputs = []
        for t in range(num_steps):
            delta_h = state_perturbations.get((layer, t, 0))
            delta_c = state_perturbations.get((layer, t, 1))
            if len(states) == 2:  # LSTM: the perturbation of c must reach h = o * tanh(c)
                states = _lstm_step(cell, sequence[t], states, delta_c)
            else:
                states = _as_list(cell.call(sequence[t], states)[1])
            if delta_h is not None:
                states[0] = states[0] + delta_h
            outputs.append(states[0])  # the output of every cell here is its state h
        if model.rnn.residual and layer > 0 and outputs[0].shape[-1] == sequence[0].shape[-1]:
            outputs = [y + x for y, x in zip(outputs, sequence)]
        sequence = outputs
    logits = model.logits_from_hidden(sequence[-1])
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(targets, "int32"), logits=logits
    )
    return tf.reduce_sum(losses)


def gradient_norms_by_distance(
    model: keras.Model,
    token_ids,
    targets=None,
    max_distance: int | None = None,
) -> dict:
    """Norms of ``dJ^(t)/dh^(t-k)`` and ``dJ^(t)/dx^(t-k)`` for ``k = 0..max_distance``.

    ``J^(t)`` is the cross-entropy of the prediction at the last position ``t`` (per example);
    the derivatives are *total* derivatives (through every later step and layer). Norms are
    Euclidean, computed per example and then averaged over the batch.

    Args:
        model: an ``RNNLanguageModel`` (any cell, any number of layers; not bidirectional).
        token_ids: int ``(batch, time)`` without padding. If ``targets`` is None the last
            column is the target and the first ``time - 1`` columns are the input.
        targets: optional int ``(batch,)``, the tokens to predict after ``token_ids``.
        max_distance: largest ``k`` (default and maximum: input length - 1).

    Returns:
        A dict of numpy arrays:

        * ``"distance"``: ``(K + 1,)``, ``0..K``.
        * ``"h"``: ``(num_layers, K + 1)``, mean ``||dJ/dh^(t-k)||`` per layer.
        * ``"c"``: same for the LSTM cell state (only for LSTMs).
        * ``"input"``: ``(K + 1,)``, mean ``||dJ/dx^(t-k)||`` for the embedded input.
        * ``"h_ratio"`` (and ``"c_ratio"``, ``"input_ratio"``): the same divided by the value
          at ``k = 0`` (``ratio[k] = mean_b ||g_k|| / mean_b ||g_0||``).
        * ``"loss"``: scalar, the mean ``J^(t)`` over the batch.

    Example:

    >>> model = RNNLanguageModel(20, cell="lstm", num_layers=2, units=8, embedding_dim=8)
    >>> ids = np.random.randint(1, 20, size=(4, 31))
    >>> norms = gradient_norms_by_distance(model, ids, max_distance=20)
    >>> norms["c"].shape
    (2, 21)
    """
    ids = _check_ids(token_ids)
    if targets is None:
        ids, target_ids = ids[:, :-1], ids[:, -1]
    else:
        target_ids = np.asarray(targets).astype("int32").reshape(-1)
    if ids.shape[1] < 1:
        raise ValueError("Need at least one input position.")
    if not model.built:
        model(ids[:, :1])
    num_steps = ids.shape[1]
    max_distance = num_steps - 1 if max_distance is None else int(max_distance)
    if not 0 <= max_distance < num_steps:
        raise ValueError(f"max_distance must be in [0, {num_steps - 1}], got {max_distance}.")
    cells = _recurrent_cells(model)
    names = _state_names(cells[0])
    batch = ids.shape[0]
    dtype = model.embedding.compute_dtype
    embedded = tf.convert_to_tensor(model.embedding(ids))
    steps = [num_steps - 1 - k for k in range(max_distance + 1)]
    state_deltas = {
        (layer, t, i): tf.zeros((batch, size), dtype=dtype)
        for layer, cell in enumerate(cells)
        for i, size in enumerate(_as_list(cell.state_size))
        for t in steps
    }
    input_deltas = {t: tf.zeros((batch, embedded.shape[-1]), dtype=dtype) for t in steps}
    with tf.GradientTape() as tape:
        tape.watch(list(state_deltas.values()) + list(input_deltas.values()))
        loss = last_position_loss(model, embedded, target_ids, state_deltas, input_deltas)
    keys = list(state_deltas)
    grads = tape.gradient(loss, [state_deltas[k] for k in keys] + [input_deltas[t] for t in steps])

    def mean_norm(g):
        return float(np.mean(np.linalg.norm(np.asarray(g, np.float64), axis=-1)))

    result = {"distance": np.arange(max_distance + 1)}
    for i, name in enumerate(names):
        table = np.zeros((len(cells), max_distance + 1))
        for (layer, t, index), g in zip(keys, grads[: len(keys)]):
            if index == i:
                table[layer, num_steps - 1 - t] = mean_norm(g)
        result[name] = table
        result[f"{name}_ratio"] = table / table[:, :1]
    result["input"] = np.array([mean_norm(g) for g in grads[len(keys) :]])
    result["input_ratio"] = result["input"] / result["input"][0]
    result["loss"] = float(loss) / batch
    return result


def jacobian_spectrum(model: keras.Model, token_ids, layer: int = 0) -> dict:
    """Largest singular values of the one-step state Jacobians along a sequence, and of ``W_h``.

    The state of layer ``layer`` is ``s = h`` (SimpleRNN, GRU) or ``s = [h, c]`` (LSTM, a
    ``2 * units`` vector); at every step ``t`` the Jacobian ``ds^(t)/ds^(t-1)`` is computed
    exactly (``tf.GradientTape.batch_jacobian``) along the trajectory the model follows on
    ``token_ids``. Its largest singular value bounds how much one step can grow a gradient;
    products of them bound ``||dJ/ds^(t-k)|| / ||dJ/ds^(t)||``.

    Args:
        model: an ``RNNLanguageModel`` (not bidirectional).
        token_ids: int ``(batch, time)`` without padding.
        layer: which recurrent layer.

    Returns:
        A dict of numpy arrays:

        * ``"step_max_singular"``: ``(batch, time)``, ``sigma_max(ds^(t)/ds^(t-1))``.
        * ``"mean_step_max_singular"``: ``(time,)``, its batch mean.
        * ``"recurrent_kernel_max_singular"``: scalar, ``sigma_max`` of the whole
          ``recurrent_kernel`` (``W_h`` for a SimpleRNN).
        * ``"recurrent_kernel_gate_max_singular"``: ``(num_gates,)``, per gate block (Keras
          order: LSTM ``i, f, c, o``; GRU ``z, r, h``).

    Example:

    >>> spectrum = jacobian_spectrum(model, ids)
    >>> spectrum["mean_step_max_singular"].max() <= spectrum["recurrent_kernel_max_singular"]
    """
    ids = _check_ids(token_ids)
    if not model.built:
        model(ids[:, :1])
    cells = _recurrent_cells(model)
    sizes = [_as_list(c.state_size) for c in cells]
    embedded = tf.convert_to_tensor(model.embedding(ids))
    num_steps = ids.shape[1]
    sequence = [embedded[:, t] for t in range(num_steps)]
    singular = []
    for index, cell in enumerate(cells[: layer + 1]):
        states = [tf.zeros((ids.shape[0], s), dtype=embedded.dtype) for s in sizes[index]]
        outputs = []
        for t in range(num_steps):
            if index == layer:
                flat = tf.concat(states, axis=-1)
                with tf.GradientTape() as tape:
                    tape.watch(flat)
                    prev = tf.split(flat, sizes[index], axis=-1)
                    _, new_states = cell.call(sequence[t], prev)
                    new_flat = tf.concat(_as_list(new_states), axis=-1)
                jac = tape.batch_jacobian(new_flat, flat)  # (batch, S, S)
                singular.append(np.linalg.svd(np.asarray(jac, np.float64), compute_uv=False)[:, 0])
                states = _as_list(new_states)
            else:
                _, states = cell.call(sequence[t], states)
                states = _as_list(states)
            outputs.append(states[0])
        if model.rnn.residual and index > 0 and outputs[0].shape[-1] == sequence[0].shape[-1]:
            outputs = [y + x for y, x in zip(outputs, sequence)]
        sequence = outputs
    step = np.stack(singular, axis=1)
    kernel = np.asarray(cells[layer].recurrent_kernel, np.float64)
    units = kernel.shape[0]
    gates = [kernel[:, g * units : (g + 1) * units] for g in range(kernel.shape[1] // units)]
    return {
        "step_max_singular": step,
        "mean_step_max_singular": step.mean(axis=0),
        "recurrent_kernel_max_singular": float(np.linalg.norm(kernel, 2)),
        "recurrent_kernel_gate_max_singular": np.array([np.linalg.norm(g, 2) for g in gates]),
    }


def _dense(g):
    return tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g


class GradientNormMonitor(keras.callbacks.Callback):
    """Logs every training step's global gradient norm *before* clipping, and whether the
    optimizer's clipping fired.

    Design: Keras 3 clips inside ``optimizer.apply_gradients``, after ``train_step`` has
    computed the gradients, and callbacks never see the gradients. At ``on_train_begin`` the
    monitor wraps the optimizer's ``apply_gradients`` (an instance attribute, so nothing else
    is affected) with a function that first stores the norms of the very gradients it receives,
    i.e. of the batch used for this update, in non-trainable ``tf.Variable`` s, then calls the
    original method. The train function is re-traced so that the wrapper is compiled in (it
    also works under ``jit_compile=True``). ``on_train_end`` removes the wrapper and drops the
    traced function again. Requires ``steps_per_execution=1`` (one update per logged step).
    With a mixed-precision ``LossScaleOptimizer`` the logged norms are those of the *scaled*
    gradients (the ones ``apply_gradients`` receives).

    Logged per step (in ``self.history`` and in the batch ``logs``, so a ``TensorBoard``
    callback placed *after* the monitor with ``update_freq="batch"`` writes them; History
    receives the epoch mean/max):

    * ``grad_norm``: ``||g|| = sqrt(sum_v ||g_v||^2)`` of the dense gradients (equal to
      ``tf.linalg.global_norm`` of the gradients with ``tf.IndexedSlices`` densified).
    * ``keras_grad_norm``: the norm Keras's clipping actually compares with the threshold.
      Keras sums the squares of an ``IndexedSlices``' *values*, so for an embedding whose
      rows repeat within a batch it differs from ``grad_norm``.
    * ``max_variable_norm``: the largest single-variable norm (what ``clipnorm`` compares).
    * ``clipped``: 1.0 if clipping changed the update (``keras_grad_norm > global_clipnorm``
      for global clipping, some variable's norm ``> clipnorm`` for per-variable clipping),
      else 0.0.

    Args:
        log_dir: optional directory; if set, the per-step values are also written as
            TensorBoard scalars (``tf.summary``, needs the ``tensorboard`` package), step =
            optimizer iteration.

    Example:

    >>> monitor = GradientNormMonitor()
    >>> model.fit(dataset, epochs=1, callbacks=[monitor])
    >>> monitor.history["grad_norm"][:3]
    """

    KEYS = ("grad_norm", "keras_grad_norm", "max_variable_norm", "clipped")

    def __init__(self, log_dir: str | None = None):
        super().__init__()
        self.log_dir = log_dir
        self.history = {key: [] for key in self.KEYS}
        self._epoch_values = {key: [] for key in self.KEYS}
        self._writer = None
        self._optimizer = None

    def on_train_begin(self, logs=None):
        if getattr(self.model, "steps_per_execution", 1) not in (1, None):
            raise ValueError("GradientNormMonitor needs steps_per_execution=1.")
        optimizer = self.model.optimizer
        self._norm = tf.Variable(0.0, trainable=False, dtype="float32")
        self._keras_norm = tf.Variable(0.0, trainable=False, dtype="float32")
        self._max_var = tf.Variable(0.0, trainable=False, dtype="float32")
        original = type(optimizer).apply_gradients.__get__(optimizer)
        monitor = self

        def apply_gradients(grads_and_vars):
            grads_and_vars = list(grads_and_vars)
            grads = [g for g, _ in grads_and_vars if g is not None]
            monitor._norm.assign(
                tf.cast(tf.linalg.global_norm([_dense(g) for g in grads]), "float32")
            )
            monitor._keras_norm.assign(tf.cast(tf.linalg.global_norm(grads), "float32"))
            monitor._max_var.assign(
                tf.cast(
                    tf.reduce_max(tf.stack([tf.linalg.global_norm([g]) for g in grads])), "float32"
                )
            )
            return original(grads_and_vars)

        optimizer.apply_gradients = apply_gradients
        self._optimizer = optimizer
        self.model.make_train_function(force=True)
        if self.log_dir is not None:
            try:
                import tensorboard  # noqa: F401  (tf.summary.scalar needs it)
            except ImportError as error:
                raise ImportError(
                    "GradientNormMonitor(log_dir=...) writes TensorBoard scalars and needs the "
                    "`tensorboard` package (pip install tensorboard); or leave log_dir=None."
                ) from error
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def _clip_fired(self, keras_norm, max_var):
        optimizer = self._optimizer
        if getattr(optimizer, "global_clipnorm", None):
            return keras_norm > optimizer.global_clipnorm
        if getattr(optimizer, "clipnorm", None):
            return max_var > optimizer.clipnorm
        return False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_values = {key: [] for key in self.KEYS}

    def on_train_batch_end(self, batch, logs=None):
        values = {
            "grad_norm": float(self._norm.numpy()),
            "keras_grad_norm": float(self._keras_norm.numpy()),
            "max_variable_norm": float(self._max_var.numpy()),
        }
        values["clipped"] = float(
            self._clip_fired(values["keras_grad_norm"], values["max_variable_norm"])
        )
        for key, value in values.items():
            self.history[key].append(value)
            self._epoch_values[key].append(value)
        if logs is not None:
            logs.update(values)
        if self._writer is not None:
            step = int(self._optimizer.iterations.numpy())
            with self._writer.as_default(step=step):
                for key, value in values.items():
                    tf.summary.scalar(f"gradients/{key}", value)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self._epoch_values["grad_norm"]:
            return
        norms = np.array(self._epoch_values["grad_norm"])
        finite = norms[np.isfinite(norms)]
        logs["grad_norm_mean"] = float(finite.mean()) if finite.size else math.nan
        logs["grad_norm_max"] = float(norms.max())
        logs["clipped_fraction"] = float(np.mean(self._epoch_values["clipped"]))

    def on_train_end(self, logs=None):
        if self._optimizer is not None and "apply_gradients" in vars(self._optimizer):
            del self._optimizer.apply_gradients
        self.model.train_function = None  # re-trace without the wrapper next time
        if self._writer is not None:
            self._writer.flush()


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
