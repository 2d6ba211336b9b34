"""The output layer on the fast path: bfloat16 matmul operands, and the output layer fused
with the masked cross-entropy for the train step.

References: ``keras.layers.Dense`` / ``ops.matmul(hidden, kernel) + bias`` for the logits
(``RNNLanguageModel.logits_from_hidden``), and ``losses.MaskedLanguageModelLoss`` on those
logits for the loss. Tolerances (``tests/fast_test.py``, ``tests/losses_metrics_test.py``):
float32 pieces equal the reference to 1e-6; bfloat16 pieces equal TensorFlow's automatic
differentiation of the same cast-matmul-cast formula to 1e-6 (the bias gradient, a product's
row, rounded to bfloat16 like the kernel's), and the float32 reference to the rounding of
bfloat16 operands (8 significant bits: ~0.4% relative per product, 0.05 absolute on
unit-scale logits; gradients 2%).
"""

import tensorflow as tf

from keras_rnnlm.distribute import cross_replica_sum
from keras_rnnlm.fast.xent import softmax_parts


@tf.function(jit_compile=True)
def _add_bias_in_float32(product, bias):  # one pass over the (positions, vocabulary) logits
    return tf.cast(product, tf.float32) + bias


@tf.function(jit_compile=True)
def _cast(d_logits, dtype):  # one pass (TensorFlow's Cast kernel is several times slower)
    return tf.cast(d_logits, dtype)


@tf.function(jit_compile=True)
def _kernel_and_bias_gradients(d_kernel_and_bias, scale):  # one pass: cast, scale, split
    d = tf.cast(d_kernel_and_bias, tf.float32) * scale
    return d[:-1], d[-1]


def dense_gradients(d_product, low_inputs, low_kernel, scale=1.0):
    """Gradients of ``low_inputs @ low_kernel + bias`` with respect to the inputs, kernel and
    bias, from ``d_product`` (operands and ``d_product`` in the same, possibly low, precision),
    each multiplied by ``scale``; returned in float32.

    The bias gradient (``d_product``'s column sums) comes out of the kernel-gradient product:
    ``[inputs, 1]^T @ d_product`` has it as its last row. A separate column sum over the
    ``(positions, vocabulary)`` gradient cost ~1.5 ms of a PTB-small training step as an XLA
    reduction, ~2 ms as a ``ones @ d_product`` product; the extra row costs ~0.5% of the
    product.

    Args:
        d_product: ``(positions, vocabulary)``.
        low_inputs: ``(positions, units)``, the forward product's left operand.
        low_kernel: ``(units, vocabulary)``, its right operand.
        scale: a scalar multiplying every gradient (the upstream gradient of a scalar loss).

    Returns:
        float32 ``(d_inputs, d_kernel, d_bias)``.

    Example:

    >>> d_x, d_w, d_b = dense_gradients(tf.ones((3, 5)), tf.ones((3, 4)), tf.ones((4, 5)))
    """
    d_inputs = _input_gradient(d_product, low_kernel, scale)
    # one product after the other: each already uses every core (oneDNN), and run
    # concurrently they took 16-17 ms together instead of ~10 (PTB-small, bf16)
    with tf.control_dependencies([d_inputs]):
        d_kernel, d_bias = _weight_gradients(d_product, low_inputs, scale)
    return d_inputs, d_kernel, d_bias


def low_precision_dense(inputs, kernel, bias, dtype):
    """``inputs @ kernel + bias`` with ``dtype`` (bfloat16) matmul operands, float32 result.

    ``inputs`` ``(positions, units)`` and ``kernel`` ``(units, vocabulary)`` are cast to
    ``dtype`` for the three matrix products (forward, and the two of the gradient), which run
    on oneDNN; the bias add and the cast of the incoming gradient are each one small XLA pass
    over the logits, and the bias gradient comes out of the kernel-gradient product
    (``dense_gradients``). TensorFlow's separate ``Cast``/``AddV2``/``Sum`` kernels took ~8 ms
    of a ~50 ms PTB-small training step.

    Args:
        inputs: float32 ``(positions, units)``.
        kernel: float32 ``(units, vocabulary)``.
        bias: float32 ``(vocabulary,)``.
        dtype: the matmul operand dtype (``"bfloat16"``).

    Returns:
        float32 logits ``(positions, vocabulary)``.

    Example:

    >>> logits = low_precision_dense(tf.ones((3, 4)), tf.ones((4, 5)), tf.zeros(5), "bfloat16")
    """
    dtype = tf.as_dtype(dtype)

    @tf.custom_gradient
    def dense(inputs, kernel, bias):
        low_inputs, low_kernel = tf.cast(inputs, dtype), tf.cast(kernel, dtype)
        logits = _add_bias_in_float32(tf.matmul(low_inputs, low_kernel), bias)

        def grad(d_logits):
            return dense_gradients(_cast(d_logits, dtype), low_inputs, low_kernel)

        return logits, grad

    return dense(inputs, tf.convert_to_tensor(kernel), tf.convert_to_tensor(bias))


@tf.function(jit_compile=True)
def _xla_output_cross_entropy(product, bias, targets, count, gradient_dtype):
    """One pass over the ``(positions, vocabulary)`` logits: NLL sum and the loss gradient."""
    logits = tf.cast(product, tf.float32) + bias
    exp, total, nll = softmax_parts(targets, logits)
    mask = tf.cast(tf.not_equal(targets, 0), tf.float32)
    weight = (mask / tf.maximum(count, 1.0))[:, None]  # d(mean NLL over real tokens)/d(NLL)
    d_logits = (exp / total - tf.one_hot(targets, tf.shape(logits)[-1])) * weight
    return tf.reduce_sum(nll * mask), tf.cast(d_logits, gradient_dtype)


def _input_gradient(d_product, low_kernel, scale):
    """The float32 gradient of ``low_inputs @ low_kernel`` with respect to ``low_inputs``."""
    return tf.cast(tf.matmul(d_product, low_kernel, transpose_b=True), tf.float32) * scale


def _weight_gradients(d_product, low_inputs, scale):
    """``(d_kernel, d_bias)`` of ``low_inputs @ kernel + bias`` from ``d_product``, float32."""
    # [inputs, 1]^T built transposed: oneDNN's bf16 product with a plain left operand took
    # 5.2 ms against 6.0 ms with ``transpose_a`` (PTB-small shapes; float32 level)
    ones = tf.ones((1, tf.shape(low_inputs)[0]), low_inputs.dtype)
    with_ones_transposed = tf.concat([tf.transpose(low_inputs), ones], axis=0)
    return _kernel_and_bias_gradients(tf.matmul(with_ones_transposed, d_product), scale)


def output_layer_cross_entropy(
    hidden, kernel, bias, targets, dtype="float32", defer_weight_gradients=False
):
    """The output layer and the masked mean cross-entropy as one operation, for training.

    Equal to ``MaskedLanguageModelLoss()(targets, hidden @ kernel + bias)`` (matmul operands in
    ``dtype``, float32 logits), but the ``(positions, vocabulary)`` logits are never written
    to memory in float32: one XLA pass computes the loss and its gradient with respect to the
    logits (in ``dtype``, already divided by the token count), and the backward pass only runs
    the two matrix products (the bias gradient is the kernel-gradient product's last row,
    ``dense_gradients``). A separate model output, loss, metric, gradient scaling, bias sum
    and cast each read or wrote the logits once (about 170 MB of memory traffic per
    PTB-small step).

    Args:
        hidden: float32 ``(positions, units)``.
        kernel: the output layer's ``(units, vocabulary)`` matrix.
        bias: the output layer's ``(vocabulary,)`` bias.
        targets: int ``(positions,)``; 0 is padding.
        dtype: matmul operand dtype, ``"float32"`` or ``"bfloat16"``.
        defer_weight_gradients: if True, the loss is differentiable with respect to
            ``hidden`` only, and a fourth result computes the kernel and bias gradients when
            the caller chooses (``fast.train_step`` runs them after every other gradient).

    Returns:
        ``(loss, nll_sum, count)``: the mean NLL over the real tokens (of the global batch
        under a multi-replica strategy; differentiable with respect to ``hidden``, ``kernel``
        and ``bias``), and this replica's float32 NLL sum and real-token count, for
        ``Perplexity.update_from_totals``. With ``defer_weight_gradients``, also
        ``weight_gradients(d_loss) -> (d_kernel, d_bias)`` (float32).

    Example:

    >>> loss, nll_sum, count = output_layer_cross_entropy(h, kernel, bias, targets)
    """
    dtype = tf.as_dtype(dtype)
    targets = tf.cast(targets, tf.int32)
    local_count = tf.reduce_sum(tf.cast(tf.not_equal(targets, 0), tf.float32))
    count = cross_replica_sum(local_count)  # the loss is the global batch's mean

    @tf.custom_gradient
    def fused(hidden, kernel, bias):
        low_hidden, low_kernel = tf.cast(hidden, dtype), tf.cast(kernel, dtype)
        product = tf.matmul(low_hidden, low_kernel)  # oneDNN; bfloat16 output when dtype is
        nll_sum, d_low = _xla_output_cross_entropy(product, bias, targets, count, dtype)

        def grad(d_loss, *unused):  # the NLL sum is reported, never differentiated
            if defer_weight_gradients:
                return _input_gradient(d_low, low_kernel, d_loss), None, None
            return dense_gradients(d_low, low_hidden, low_kernel, d_loss)

        return (nll_sum / tf.maximum(count, 1.0), nll_sum, d_low, low_hidden), grad

    loss, nll_sum, d_low, low_hidden = fused(
        hidden, tf.convert_to_tensor(kernel), tf.convert_to_tensor(bias)
    )
    if not defer_weight_gradients:
        return loss, tf.stop_gradient(nll_sum), local_count

    def weight_gradients(d_loss):
        return _weight_gradients(d_low, low_hidden, d_loss)

    return loss, tf.stop_gradient(nll_sum), local_count, weight_gradients
