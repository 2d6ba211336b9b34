"""The language-model loss: cross-entropy averaged over real (non-padding) tokens."""

import keras
from keras import ops

from keras_rnnlm.distribute import cross_replica_sum
from keras_rnnlm.fast.output_layer import (  # noqa: F401  (re-exported: the old home)
    output_layer_cross_entropy,
)
from keras_rnnlm.fast.xent import xla_sparse_softmax_cross_entropy

_PACKAGE = "keras_rnnlm"


def sparse_softmax_cross_entropy(targets, logits, jit_compile=False, differentiable=True):
    """``-log softmax(logits)[target]`` per position, without materialising probabilities.

    Args:
        targets: int ``(...)``.
        logits: ``(..., vocabulary)``.
        jit_compile: False (reference): ``keras.ops.sparse_categorical_crossentropy``.
            True: the same computation and its gradient in one small XLA function
            (``keras_rnnlm.fast.xent``), faster on CPU in a train step that is not
            XLA-compiled as a whole (the fast path's).
        differentiable: False (metrics): with ``jit_compile``, skip the gradient.

    Returns:
        The NLL, shape ``targets.shape``.

    Example:

    >>> nll = sparse_softmax_cross_entropy([[1, 2]], keras.ops.zeros((1, 2, 5)))
    """
    targets = ops.cast(targets, "int32")
    if not jit_compile:
        return ops.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    return xla_sparse_softmax_cross_entropy(targets, logits, differentiable)


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
    ``sparse_softmax_cross_entropy``); ``compile_language_model`` sets it on the fast path.

    On the fast path (``keras_rnnlm.fast``) the train step computes this loss fused with the
    output layer (``fast.output_layer.output_layer_cross_entropy``), because the class says
    it may: ``supports_fused_output_layer = True``. A subclass inherits it; a subclass that
    changes the loss's formula must set it to False (then the train step calls it on the
    logits).

    Args:
        name: the loss's name.
        jit_compile: see above.
        **kwargs: other ``keras.losses.Loss`` arguments (``reduction`` is ignored).

    Returns:
        The scalar mean NLL over the real tokens when called.

    Under a multi-replica ``tf.distribute`` strategy ``T`` is the number of real tokens of the
    *global* batch (summed across replicas), so the summed replica gradients are exactly the
    gradient of the global-batch mean, however the padding falls across replicas. (Keras's
    built-in losses divide by each replica's own count, then by the number of replicas.)

    Example:

    >>> model.compile(optimizer="sgd", loss=MaskedLanguageModelLoss())
    """

    #: the fast path may compute this loss fused with the output layer (see above)
    supports_fused_output_layer = True

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
