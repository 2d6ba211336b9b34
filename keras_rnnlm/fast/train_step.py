"""The one dispatch place: which path a compiled ``RNNLanguageModel`` takes, and the fused
train step of the fast path.

``RNNLanguageModel.compile`` calls ``configure_compile`` (before Keras's ``compile``) and
``finish_compile`` (after); ``RNNLanguageModel.train_step`` calls ``fused_train_step`` and
falls back to Keras's ``train_step`` when it returns None. The reference for the fused step
is Keras's ``train_step`` with the same loss and metrics (``tests/training_test.py``: logs and
weights equal to 1e-5 in float32; bfloat16 within its rounding, and a loss-curve comparison).
"""

import keras
import tensorflow as tf

from keras_rnnlm import compat
from keras_rnnlm.fast.output_layer import output_layer_cross_entropy

#: the old spelling of the fast path: ``compile(jit_compile="recurrence")``
JIT_RECURRENCE = "recurrence"

#: Compute the output layer's kernel and bias gradients after every other gradient. A
#: running product holds one of TensorFlow's inter-op threads (one per core), so run beside
#: the recurrent layers' backward time loops it made their row parts (``fast.time_loop``)
#: run one after the other instead of side by side.
DEFER_OUTPUT_WEIGHT_GRADIENTS = True

#: A stateless model's batch is cut after its last column holding a real token (input or
#: target), rounded up to a multiple of this many steps (few distinct lengths to compile).
TRIM_MULTIPLE = 8

#: ... and its output layer runs on the real target positions only, their number rounded up
#: to a multiple of this many rows with padding positions (few distinct shapes to compile).
POSITION_MULTIPLE = 32


def fast_path_supported(model: keras.Model, jit_compile="auto") -> bool:
    """Whether ``implementation="auto"`` picks the fast path for ``model`` here.

    Args:
        model: an ``RNNLanguageModel``.
        jit_compile: the ``compile`` argument. ``"auto"`` lets the library choose; an
            explicit ``True`` (whole-step XLA) or ``False`` (a graph without XLA) is honoured
            with the reference layers.

    Returns:
        True for the from-scratch layers on one replica (no TPU) with ``jit_compile="auto"``.

    Example:

    >>> fast_path_supported(RNNLanguageModel(100))
    True
    """
    if getattr(model, "use_builtin_layers", False) or jit_compile != "auto":
        return False
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync != 1:
        return False
    return not isinstance(strategy, (tf.distribute.TPUStrategy,))


def uses_fast_path(model: keras.Model, jit_compile="auto") -> bool:
    """The path ``model.compile(jit_compile=jit_compile)`` takes: True for the fast path.

    ``implementation="reference"`` never, ``"fast"`` (or ``jit_compile="recurrence"``)
    always, ``"auto"`` when ``fast_path_supported``.
    """
    implementation = getattr(model, "implementation", "reference")
    if implementation == "reference":
        return False
    if implementation == "fast" or jit_compile == JIT_RECURRENCE:
        return True
    return fast_path_supported(model, jit_compile)


def _fusable(loss, metrics, compile_kwargs) -> bool:
    if not getattr(loss, "supports_fused_output_layer", False):
        return False
    if metrics is not None and not isinstance(metrics, (list, tuple)):
        return False  # a dict of metrics per output
    if any(compile_kwargs.get(k) for k in ("loss_weights", "weighted_metrics")):
        return False
    return all(getattr(m, "supports_update_from_totals", False) for m in metrics or [])


def configure_compile(model, jit_compile, loss, metrics, compile_kwargs):
    """Choose the path for ``model.compile``; returns the ``jit_compile`` to give Keras.

    On the fast path: every ``Recurrent`` layer's ``jit_time_loop`` on, the step a graph
    (``False``), and the fused train step when the loss and metrics allow it.
    """
    fast = uses_fast_path(model, jit_compile)
    # untracked runtime state (not saved); the metrics belong to Keras's compiled metrics
    object.__setattr__(model, "_fast_path", fast)
    resolve = getattr(model, "output_matmul_dtype", None)  # follows output_dtype
    training_dtype = resolve(training=True) if fast and resolve else "float32"
    for layer in model.rnn.rnn_layers:
        if hasattr(layer, "jit_time_loop"):
            layer.jit_time_loop = fast
            layer.training_matmul_dtype = training_dtype
    fused = list(metrics or []) if fast and _fusable(loss, metrics, compile_kwargs) else None
    object.__setattr__(model, "_fused_metrics", fused)
    if fast or jit_compile == JIT_RECURRENCE:
        return False
    return jit_compile


def finish_compile(model, jit_compile) -> None:
    """Save the caller's ``jit_compile`` (not the one given to Keras) in the compile config,
    so a reloaded model makes the same choice again on its own device."""
    compat.set_compile_config_value(model, "jit_compile", jit_compile)


def trim_trailing_padding(x, y, multiple: int = TRIM_MULTIPLE):
    """``(x, y)`` without the trailing time steps that are padding in every row.

    Such steps change nothing: the recurrent layers pass their states through masked steps
    and the loss skips padded targets. Bucketed sentence batches are padded to their
    bucket's boundary (``keras_rnnlm.data.sentence_dataset``: a catch-all last bucket is
    much wider than most of its sentences), and ``pad_sequences(..., maxlen=...)`` pads to a
    fixed width; the fast step skips those columns (as ``pack_padded_sequence`` would in a
    PyTorch loop). The kept length is rounded up to a multiple of ``multiple`` (at most the
    batch's width), so a data set compiles few new shapes.

    Args:
        x: int ``(batch, time)`` input ids, 0 = padding.
        y: int ``(batch, time)`` target ids, 0 = padding.
        multiple: round the kept length up to a multiple of this.

    Returns:
        ``(x[:, :length], y[:, :length])``; at least one step is kept.

    Example:

    >>> ids = tf.constant([[5, 0, 0], [7, 0, 0]])
    >>> trim_trailing_padding(ids, ids, multiple=1)[0].shape
    TensorShape([2, 1])
    """
    steps = tf.shape(x)[1]
    real = tf.logical_or(tf.not_equal(x, 0), tf.not_equal(y, 0))
    last = tf.reduce_max(tf.where(real, tf.range(1, steps + 1)[None, :], 0))  # 0: none
    length = tf.minimum(steps, tf.maximum((last + multiple - 1) // multiple * multiple, 1))
    return x[:, :length], y[:, :length]


def real_target_positions(hidden, targets, multiple: int = POSITION_MULTIPLE):
    """The rows of the flattened positions whose target is real, then padding ones up to a
    multiple of ``multiple`` rows (never more rows than there are).

    The output layer and the loss do nothing for a padded target (its loss weight is 0), but
    its logits cost as much as a real one's: after ``trim_trailing_padding``, 18% of the
    positions of the README's first 100 sentence batches are padding. Rows keep their
    gradient: the gather's gradient puts each row's back at its position (zeros at the
    positions left out).

    Args:
        hidden: ``(positions, units)`` last-layer outputs.
        targets: int ``(positions,)`` target ids, 0 = padding.
        multiple: round the number of rows up to a multiple of this.

    Returns:
        ``(hidden_rows, target_rows)``: the real positions first, in order, then padding ones.

    Example:

    >>> h, t = real_target_positions(tf.ones((4, 2)), tf.constant([3, 0, 5, 0]), multiple=1)
    >>> t.numpy().tolist()
    [3, 5]
    """
    real = tf.not_equal(targets, 0)
    real_rows = tf.where(real)[:, 0]
    order = tf.concat([real_rows, tf.where(tf.logical_not(real))[:, 0]], axis=0)
    count = tf.shape(real_rows)[0]
    rows = tf.minimum(
        tf.shape(targets)[0], tf.maximum((count + multiple - 1) // multiple, 1) * multiple
    )
    order = order[:rows]
    return tf.gather(hidden, order), tf.gather(targets, order)


def _is_id_matrix(value) -> bool:
    return tf.is_tensor(value) and value.shape.rank == 2 and value.dtype.is_integer


def fused_train_step(model, data):
    """The fast path's train step (output layer fused with the loss), or None to fall back.

    Args:
        model: a compiled ``RNNLanguageModel``.
        data: the batch, ``(x, y)`` or ``(x, y, sample_weight)``.

    Returns:
        The logs dict, or None when the fused step does not apply (reference path, a loss or
        metric without the capability, sample weights, several replicas).
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if (
        model._fused_metrics is None
        or sample_weight is not None
        or tf.distribute.get_strategy().num_replicas_in_sync != 1
    ):
        return None
    sentences = not getattr(model, "stateful", True) and _is_id_matrix(x) and _is_id_matrix(y)
    if sentences:  # a stream's batches have no padding to skip
        x, y = trim_trailing_padding(x, y, TRIM_MULTIPLE)
    with tf.GradientTape() as tape:
        hidden, _ = model.hidden_states(x, training=True)  # (batch, time, units)
        weights = list(model.trainable_weights)
        kernel, bias = model.output_weights()
        # the output layer's weight gradients wait for every other gradient (see
        # DEFER_OUTPUT_WEIGHT_GRADIENTS) when they are variables (not a tied embedding)
        output_variables = [kernel, bias]
        defer = DEFER_OUTPUT_WEIGHT_GRADIENTS and all(
            any(v is w for w in weights) for v in output_variables
        )
        hidden, targets = tf.reshape(hidden, [-1, hidden.shape[-1]]), tf.reshape(y, [-1])
        if sentences:
            hidden, targets = real_target_positions(hidden, targets, POSITION_MULTIPLE)
        fused_loss, nll_sum, count, *deferred = output_layer_cross_entropy(
            hidden,
            kernel,
            bias,
            targets,
            model.output_matmul_dtype(training=True),
            defer_weight_gradients=defer,
        )
        tape.watch(fused_loss)
        loss = fused_loss
        if model.losses:
            loss = loss + tf.add_n(model.losses)
        compat.update_loss_tracker(model, loss, tf.shape(y)[0])  # x may be a dict
        scaled = model.optimizer.scale_loss(loss)
    *gradients, d_fused_loss = tape.gradient(scaled, [*weights, fused_loss])
    if defer:
        (weight_gradients,) = deferred
        others = [g for g, w in zip(gradients, weights) if g is not None]
        with tf.control_dependencies(tf.nest.flatten(others, expand_composites=True)):
            late = weight_gradients(d_fused_loss)
        for variable, late_gradient in zip(output_variables, late):
            i = next(i for i, w in enumerate(weights) if w is variable)
            gradients[i] = late_gradient if gradients[i] is None else gradients[i] + late_gradient
    model.optimizer.apply_gradients(zip(gradients, weights))
    if model._fused_metrics:
        compat.build_compiled_metrics(model, y)
        for metric in model._fused_metrics:
            metric.update_from_totals(nll_sum, count)
    return model.get_metrics_result()
