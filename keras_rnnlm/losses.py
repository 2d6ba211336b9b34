"""The language-model loss: cross-entropy averaged over real (non-padding) tokens."""

import keras
import tensorflow as tf
from keras import ops

from keras_rnnlm.distribute import cross_replica_sum

_PACKAGE = "keras_rnnlm"


def _softmax_parts(targets, logits):
    """``exp(z - max z)``, its row sums and the NLL of ``targets`` (traced inside XLA)."""
    shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
    exp = tf.exp(shifted)
    total = tf.reduce_sum(exp, axis=-1, keepdims=True)
    nll = tf.math.log(total[..., 0]) - tf.gather(shifted, targets, batch_dims=len(targets.shape))
    return exp, total, nll


@tf.function(jit_compile=True)
def _xla_xent(targets, logits):
    return _softmax_parts(targets, tf.cast(logits, tf.float32))[2]


@tf.function(jit_compile=True)
def _xla_xent_and_grad(targets, logits):
    logits = tf.cast(logits, tf.float32)
    exp, total, nll = _softmax_parts(targets, logits)
    return nll, exp / total - tf.one_hot(targets, tf.shape(logits)[-1], dtype=tf.float32)


@tf.function(jit_compile=True)
def _xla_scale(upstream, grad):
    return upstream[..., None] * grad


@tf.custom_gradient
def _xla_sparse_softmax_cross_entropy(targets, logits):
    nll, grad = _xla_xent_and_grad(targets, logits)

    def backward(upstream):
        return None, tf.cast(_xla_scale(upstream, grad), logits.dtype)

    return nll, backward


def sparse_softmax_cross_entropy(targets, logits, jit_compile=False, differentiable=True):
    """``-log softmax(logits)[target]`` per position, without materialising probabilities.

    ``jit_compile=False`` uses TensorFlow's fused op. ``jit_compile=True`` runs the same
    computation (and its gradient, ``softmax - one_hot``, computed in the same pass) as a
    small XLA function: on CPU TensorFlow's fused kernel is several times slower than XLA's
    vectorised one, so a train step that is *not* XLA-compiled as a whole
    (``compile_language_model(jit_compile="recurrence")``) should use this. Inside an
    XLA-compiled step both are compiled anyway. One XLA compilation per input shape.
    ``differentiable=False`` (metrics): with ``jit_compile``, skip computing the gradient.
    """
    targets = ops.cast(targets, "int32")
    if not jit_compile:
        return ops.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    if not differentiable:
        return _xla_xent(targets, logits)
    return _xla_sparse_softmax_cross_entropy(targets, logits)


def token_nll(targets, logits, jit_compile=False, differentiable=True):
    """Per-token negative log-likelihood ``(batch, time)`` and the real-token mask.

    Uses a fused sparse softmax cross-entropy (no ``(batch, time, vocab)`` probabilities
    are materialised; ``jit_compile``: see ``sparse_softmax_cross_entropy``). Target id 0 is
    padding: its NLL is returned as 0 and its mask as 0.
    """
    targets = ops.cast(targets, "int32")
    nll = sparse_softmax_cross_entropy(targets, logits, jit_compile, differentiable)
    mask = ops.cast(ops.not_equal(targets, 0), nll.dtype)
    return nll * mask, mask


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedLanguageModelLoss(keras.losses.Loss):
    """Mean cross-entropy over the real tokens of a batch: ``sum(NLL * mask) / sum(mask)``.

    Padded positions (target id 0) never count, whatever the batch's padding. This is the
    lecture's loss ``J = (1/T) sum_t J^(t)``, with ``T`` the number of real tokens in the
    batch. ``sample_weight`` (optional, ``(batch,)`` or ``(batch, time)``) multiplies the mask.
    ``jit_compile=True`` computes the cross-entropy with a small XLA function (see
    ``sparse_softmax_cross_entropy``); ``compile_language_model(jit_compile="recurrence")``
    sets it.

    Under a multi-replica ``tf.distribute`` strategy ``T`` is the number of real tokens of the
    *global* batch (summed across replicas), so the summed replica gradients are exactly the
    gradient of the global-batch mean, however the padding falls across replicas. (Keras's
    built-in losses divide by each replica's own count, then by the number of replicas.)

    Example:

    >>> model.compile(optimizer="sgd", loss=MaskedLanguageModelLoss())
    """

    def __init__(self, name="masked_lm_loss", jit_compile=False, **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="none", **kwargs)
        self.jit_compile = jit_compile

    def call(self, y_true, y_pred):
        return token_nll(y_true, y_pred, self.jit_compile)[0]

    def __call__(self, y_true, y_pred, sample_weight=None):
        nll, mask = token_nll(y_true, y_pred, self.jit_compile)
        if sample_weight is not None:
            weight = ops.cast(sample_weight, mask.dtype)
            if len(weight.shape) == 1:
                weight = weight[:, None]
            mask = mask * weight
            nll = nll * weight
        # (a replica's share of) the global mean: the count is summed over the replicas
        return ops.divide_no_nan(ops.sum(nll), cross_replica_sum(ops.sum(mask)))

    def get_config(self):
        config = super().get_config()
        config["jit_compile"] = self.jit_compile
        return config


def low_precision_matmul_gradients(d_product, low_inputs, low_kernel):
    """Gradients of ``low_inputs @ low_kernel`` (operands in a low precision) with respect to
    both operands, from ``d_product`` in the same precision; returned in float32."""
    d_inputs = tf.matmul(d_product, low_kernel, transpose_b=True)
    d_kernel = tf.matmul(low_inputs, d_product, transpose_a=True)
    return tf.cast(d_inputs, tf.float32), tf.cast(d_kernel, tf.float32)


@tf.function(jit_compile=True)
def _xla_output_cross_entropy(product, bias, targets, count, gradient_dtype):
    """One pass over the ``(positions, vocabulary)`` logits: NLL sum and the loss gradient."""
    logits = tf.cast(product, tf.float32) + bias
    exp, total, nll = _softmax_parts(targets, logits)
    mask = tf.cast(tf.not_equal(targets, 0), tf.float32)
    weight = (mask / tf.maximum(count, 1.0))[:, None]  # d(mean NLL over real tokens)/d(NLL)
    d_logits = (exp / total - tf.one_hot(targets, tf.shape(logits)[-1])) * weight
    return tf.reduce_sum(nll * mask), tf.cast(d_logits, gradient_dtype), tf.reduce_sum(d_logits, 0)


def output_layer_cross_entropy(hidden, kernel, bias, targets, dtype="float32"):
    """The output layer and the masked mean cross-entropy as one operation, for training.

    Equal to ``MaskedLanguageModelLoss()(targets, hidden @ kernel + bias)`` (matmul operands in
    ``dtype``, float32 logits), but the ``(positions, vocabulary)`` logits are never written
    to memory in float32: one XLA pass computes the loss and its gradient with respect to the
    logits (in ``dtype``, already divided by the token count) and the bias gradient, and the
    backward pass only runs the two matrix products. A separate model output, loss, metric,
    gradient scaling, bias sum and cast each read or wrote the logits once (about 170 MB of
    memory traffic per PTB-small step).

    Args:
        hidden: float32 ``(positions, units)``.
        kernel, bias: the output layer, ``(units, vocabulary)`` and ``(vocabulary,)``.
        targets: int ``(positions,)``; 0 is padding.
        dtype: matmul operand dtype, ``"float32"`` or ``"bfloat16"``.

    Returns:
        ``(loss, nll_sum, count)``: the mean NLL over the real tokens (of the global batch
        under a multi-replica strategy; differentiable with respect to ``hidden``, ``kernel``
        and ``bias``), and this replica's float32 NLL sum and real-token count, for
        ``Perplexity.update_from_totals``.
    """
    dtype = tf.as_dtype(dtype)
    targets = tf.cast(targets, tf.int32)
    local_count = tf.reduce_sum(tf.cast(tf.not_equal(targets, 0), tf.float32))
    count = cross_replica_sum(local_count)  # the loss is the global batch's mean

    @tf.custom_gradient
    def fused(hidden, kernel, bias):
        low_hidden, low_kernel = tf.cast(hidden, dtype), tf.cast(kernel, dtype)
        product = tf.matmul(low_hidden, low_kernel)  # oneDNN; bfloat16 output when dtype is
        nll_sum, d_low, d_bias = _xla_output_cross_entropy(product, bias, targets, count, dtype)

        def grad(d_loss, d_nll_sum):
            del d_nll_sum  # the NLL sum is reported, never differentiated
            d_hidden, d_kernel = low_precision_matmul_gradients(d_low, low_hidden, low_kernel)
            return d_hidden * d_loss, d_kernel * d_loss, d_bias * d_loss

        return (nll_sum / tf.maximum(count, 1.0), nll_sum), grad

    loss, nll_sum = fused(hidden, tf.convert_to_tensor(kernel), tf.convert_to_tensor(bias))
    return loss, tf.stop_gradient(nll_sum), local_count
