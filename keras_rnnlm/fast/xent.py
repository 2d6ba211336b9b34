"""XLA sparse softmax cross-entropy: the loss, its gradient and the metric's NLL.

On CPU TensorFlow's fused ``SparseSoftmaxCrossEntropyWithLogits`` kernel is several times
slower than XLA's vectorised code, so a train step that is *not* XLA-compiled as a whole (the
fast path's graph-mode step) computes the cross-entropy with these small XLA functions. The
reference is ``keras.ops.sparse_categorical_crossentropy(..., from_logits=True)``
(``tests/losses_metrics_test.py`` compares both with a hand computation).
"""

import tensorflow as tf


def softmax_parts(targets, logits):
    """``exp(z - max z)``, its row sums and the NLL of ``targets`` (traced inside XLA)."""
    shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
    exp = tf.exp(shifted)
    total = tf.reduce_sum(exp, axis=-1, keepdims=True)
    nll = tf.math.log(total[..., 0]) - tf.gather(shifted, targets, batch_dims=len(targets.shape))
    return exp, total, nll


@tf.function(jit_compile=True)
def _xla_xent(targets, logits):
    return softmax_parts(targets, tf.cast(logits, tf.float32))[2]


@tf.function(jit_compile=True)
def _xla_xent_and_grad(targets, logits):
    logits = tf.cast(logits, tf.float32)
    exp, total, nll = softmax_parts(targets, logits)
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


def xla_sparse_softmax_cross_entropy(targets, logits, differentiable: bool = True):
    """``-log softmax(logits)[targets]`` per position as one XLA computation.

    Args:
        targets: int32 ``(...)`` target ids.
        logits: ``(..., vocabulary)``.
        differentiable: also compute the gradient ``softmax - one_hot`` in the same pass
            (False for metrics, which are never differentiated).

    Returns:
        float32 NLL of shape ``targets.shape``. One XLA compilation per input shape.

    Example:

    >>> nll = xla_sparse_softmax_cross_entropy(tf.constant([[1, 2]]), tf.zeros((1, 2, 5)))
    """
    if not differentiable:
        return _xla_xent(targets, logits)
    return _xla_sparse_softmax_cross_entropy(targets, logits)
