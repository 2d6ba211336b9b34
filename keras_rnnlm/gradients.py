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
  clipping and whether the optimizer's clipping fired (defined in
  ``keras_rnnlm.gradient_monitor``, importable from here too).
* ``plot_norms_by_distance`` and ``plot_gradient_norm_trace``: matplotlib figures (defined in
  ``keras_rnnlm.plotting``, importable from here too).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_rnnlm.gradient_monitor import GradientNormMonitor
from keras_rnnlm.layers import residual_connection
from keras_rnnlm.models import check_token_ids
from keras_rnnlm.plotting import plot_gradient_norm_trace, plot_norms_by_distance
from keras_rnnlm.recurrent import as_list

__all__ = [
    "GradientNormMonitor",  # re-exported from keras_rnnlm.gradient_monitor
    "gradient_norms_by_distance",
    "jacobian_spectrum",
    "last_position_loss",
    "plot_gradient_norm_trace",  # re-exported from keras_rnnlm.plotting
    "plot_norms_by_distance",  # re-exported from keras_rnnlm.plotting
]

_PACKAGE = "keras_rnnlm"


def _recurrent_cells(model):
    """The cells of ``model.rnn``, bottom layer first; rejects bidirectional stacks."""
    if getattr(model.rnn, "bidirectional", False):
        raise ValueError("Gradient diagnostics need a causal (not bidirectional) model.")
    return [layer.cell for layer in model.rnn.rnn_layers]


def _state_names(cell) -> list[str]:
    sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
    return ["h", "c"][: len(sizes)] if len(sizes) <= 2 else [f"s{i}" for i in range(len(sizes))]


def _check_ids(model, token_ids) -> np.ndarray:
    """``token_ids`` as int32 after the library's id checks (rank 2, integers, inside the
    model's vocabulary) and the diagnostics' own: no padding."""
    ids = np.asarray(token_ids)
    check_token_ids(ids, model.vocabulary_size, rank=2)
    if np.any(ids == 0):
        raise ValueError(
            "token_ids contains padding (id 0); the diagnostics unroll unmasked sequences."
        )
    return ids.astype("int32")


def _lstm_step(cell, x, states, delta_c=None):
    """One LSTM step with ``delta_c`` added to ``c_t`` *before* ``h_t = o * tanh(c_t)``, so that
    ``dJ/d(delta_c)`` is the total derivative ``dJ/dc_t`` (through ``h_t`` as well as through
    ``c_{t+1}``). Without ``delta_c`` it is the cell's own ``call``.

    A cell's step does not return the output gate ``o``, so the perturbed step restates the
    gate equations in the weight layout shared by ``keras_rnnlm.cells.LSTMCell`` and Keras's
    ``LSTMCell`` (gate order ``i, f, c, o``), which ``test_gradient_norms_match_finite_
    differences`` and ``test_norms_match_keras_builtin_layers`` hold to the cells' own output."""
    if delta_c is None:
        return as_list(cell.call(x, states)[1])
    h_prev, c_prev = states
    z = tf.matmul(x, cell.kernel) + tf.matmul(h_prev, cell.recurrent_kernel)
    if cell.use_bias:
        z = z + cell.bias
    z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
    c = tf.sigmoid(z_f) * c_prev + tf.sigmoid(z_i) * tf.tanh(z_c) + delta_c
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
            tf.zeros((batch, size), dtype=embedded.dtype) for size in as_list(cell.state_size)
        ]
        outputs = []
        for t in range(num_steps):
            delta_h = state_perturbations.get((layer, t, 0))
            delta_c = state_perturbations.get((layer, t, 1))
            if len(states) == 2:  # LSTM: the perturbation of c must reach h = o * tanh(c)
                states = _lstm_step(cell, sequence[t], states, delta_c)
            else:
                states = as_list(cell.call(sequence[t], states)[1])
            if delta_h is not None:
                states[0] = states[0] + delta_h
            outputs.append(states[0])  # the output of every cell here is its state h
        sequence = residual_connection(model.rnn.residual, layer, outputs, sequence)
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
    ids = _check_ids(model, token_ids)
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
        for i, size in enumerate(as_list(cell.state_size))
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


class _StepJacobian:
    """``(ds^(t)/ds^(t-1), s^(t))`` of one cell step, the flat state ``s`` as ``(batch, S)``.

    A callable object rather than a closure, so that its ``tf.function`` keeps retracing
    statistics of its own (TensorFlow keys them by the code object, which closures share).
    """

    def __init__(self, cell, sizes):
        self.cell, self.sizes = cell, list(sizes)

    def __call__(self, inputs, flat):
        with tf.GradientTape() as tape:
            tape.watch(flat)
            prev = tf.split(flat, self.sizes, axis=-1)
            _, new_states = self.cell.call(inputs, prev)
            new_flat = tf.concat(as_list(new_states), axis=-1)
        return tape.batch_jacobian(new_flat, flat), as_list(new_states)  # (batch, S, S)


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
    ids = _check_ids(model, token_ids)
    if not model.built:
        model(ids[:, :1])
    cells = _recurrent_cells(model)
    sizes = [as_list(c.state_size) for c in cells]
    embedded = tf.convert_to_tensor(model.embedding(ids))
    num_steps = ids.shape[1]
    sequence = [embedded[:, t] for t in range(num_steps)]
    singular = []
    for index, cell in enumerate(cells[: layer + 1]):
        states = [tf.zeros((ids.shape[0], s), dtype=embedded.dtype) for s in sizes[index]]
        outputs = []
        # one graph for every step (traced once): batch_jacobian's vectorisation (pfor) run
        # eagerly would wrap a new tf.function per step, each traced anew
        step_jacobian = tf.function(_StepJacobian(cell, sizes[index])) if index == layer else None
        for t in range(num_steps):
            if index == layer:
                jac, new_states = step_jacobian(sequence[t], tf.concat(states, axis=-1))
                singular.append(np.linalg.svd(np.asarray(jac, np.float64), compute_uv=False)[:, 0])
                states = as_list(new_states)
            else:
                _, states = cell.call(sequence[t], states)
                states = as_list(states)
            outputs.append(states[0])
        sequence = residual_connection(model.rnn.residual, index, outputs, sequence)
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
