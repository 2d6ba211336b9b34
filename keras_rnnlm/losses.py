"""The language-model loss: cross-entropy averaged over real (non-padding) tokens."""

import keras
from keras import ops

from keras_rnnlm.distribute import cross_replica_sum

_PACKAGE = "keras_rnnlm"


def token_nll(targets, logits):
    """Per-token negative log-likelihood ``(batch, time)`` and the real-token mask.

    Uses the fused sparse softmax cross-entropy (no ``(batch, time, vocab)`` probabilities
    are materialised). Target id 0 is padding: its NLL is returned as 0 and its mask as 0.
    """
    targets = ops.cast(targets, "int32")
    nll = ops.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    mask = ops.cast(ops.not_equal(targets, 0), nll.dtype)
    return nll * mask, mask


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedLanguageModelLoss(keras.losses.Loss):
    """Mean cross-entropy over the real tokens of a batch: ``sum(NLL * mask) / sum(mask)``.

    Padded positions (target id 0) never count, whatever the batch's padding. This is the
    lecture's loss ``J = (1/T) sum_t J^(t)``, with ``T`` the number of real tokens in the
    batch. ``sample_weight`` (optional, ``(batch,)`` or ``(batch, time)``) multiplies the mask.

    Under a multi-replica ``tf.distribute`` strategy ``T`` is the number of real tokens of the
    *global* batch (summed across replicas), so the summed replica gradients are exactly the
    gradient of the global-batch mean, however the padding falls across replicas. (Keras's
    built-in losses divide by each replica's own count, then by the number of replicas.)

    Example:

    >>> model.compile(optimizer="sgd", loss=MaskedLanguageModelLoss())
    """

    def __init__(self, name="masked_lm_loss", **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="none", **kwargs)

    def call(self, y_true, y_pred):
        return token_nll(y_true, y_pred)[0]

    def __call__(self, y_true, y_pred, sample_weight=None):
        nll, mask = token_nll(y_true, y_pred)
        if sample_weight is not None:
            weight = ops.cast(sample_weight, mask.dtype)
            if len(weight.shape) == 1:
                weight = weight[:, None]
            mask = mask * weight
            nll = nll * weight
        # (a replica's share of) the global mean: the count is summed over the replicas
        return ops.divide_no_nan(ops.sum(nll), cross_replica_sum(ops.sum(mask)))
