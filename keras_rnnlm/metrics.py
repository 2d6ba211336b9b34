"""Streaming, exact perplexity and bits per character."""

import math

import keras
from keras import ops

from keras_rnnlm.losses import token_nll

_PACKAGE = "keras_rnnlm"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Perplexity(keras.metrics.Metric):
    """``exp(total NLL / total real tokens)`` over everything seen since the last reset.

    Not a mean of per-batch perplexities or losses: a batch with many real tokens weighs
    more than a short one, exactly as in the definition of corpus perplexity. Padding
    (target 0) never counts.

    Args:
        name: metric name.
        jit_compile: compute the cross-entropy with a small XLA function (see
            ``keras_rnnlm.losses.sparse_softmax_cross_entropy``).

    The fast path's fused train step updates it with ``update_from_totals`` (the NLL sum and
    token count it computes anyway) because the class says it may:
    ``supports_update_from_totals = True``, inherited by subclasses; a subclass whose
    ``update_state`` is not ``update_from_totals`` of those sums must set it to False.

    Example:

    >>> model.compile(loss=MaskedLanguageModelLoss(), metrics=[Perplexity()])
    """

    #: the fast path may call ``update_from_totals`` instead of ``update_state`` (see above)
    supports_update_from_totals = True

    def __init__(self, name="perplexity", jit_compile=False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.jit_compile = jit_compile
        self.total_nll = self.add_variable(
            shape=(), initializer="zeros", name="total_nll", dtype="float64"
        )
        self.total_tokens = self.add_variable(
            shape=(), initializer="zeros", name="total_tokens", dtype="float64"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        # a metric is never differentiated: no gradient computed alongside the NLL
        nll, mask = token_nll(y_true, y_pred, self.jit_compile, differentiable=False)
        if sample_weight is not None:
            weight = ops.cast(sample_weight, mask.dtype)
            weight = weight[:, None] if len(weight.shape) == 1 else weight
            nll, mask = nll * weight, mask * weight
        self.update_from_totals(ops.sum(nll), ops.sum(mask))

    def update_from_totals(self, nll_sum, num_tokens):
        """Add a batch given as its summed NLL and its number of real tokens (for a train step
        that computes them anyway, e.g. ``losses.output_layer_cross_entropy``)."""
        self.total_nll.assign_add(ops.cast(nll_sum, "float64"))
        self.total_tokens.assign_add(ops.cast(num_tokens, "float64"))

    def mean_nll(self):
        return ops.divide_no_nan(self.total_nll, self.total_tokens)

    def result(self):
        return ops.cast(ops.exp(self.mean_nll()), "float32")

    def reset_state(self):
        self.total_nll.assign(0.0)
        self.total_tokens.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "jit_compile": self.jit_compile}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BitsPerCharacter(Perplexity):
    """``total NLL / total real tokens / ln 2`` for character-level models (same streaming)."""

    def __init__(self, name="bits_per_character", jit_compile=False, **kwargs):
        super().__init__(name=name, jit_compile=jit_compile, **kwargs)

    def result(self):
        return ops.cast(self.mean_nll() / math.log(2.0), "float32")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedAccuracy(keras.metrics.Metric):
    """Fraction of real positions (target id != 0) whose argmax prediction equals the target.

    Streaming over everything seen since the last reset (total correct / total real tokens),
    for taggers whose tag 0 is padding. ``y_pred`` holds logits or probabilities
    ``(batch, time, classes)``; ``y_true`` int ``(batch, time)``.

    Example:

    >>> tagger.compile(loss=MaskedLanguageModelLoss(), metrics=[MaskedAccuracy()])
    """

    def __init__(self, name="masked_accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.correct = self.add_variable(
            shape=(), initializer="zeros", name="correct", dtype="float64"
        )
        self.total = self.add_variable(shape=(), initializer="zeros", name="total", dtype="float64")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        mask = ops.cast(ops.not_equal(y_true, 0), "float64")
        hit = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), "float64")
        if sample_weight is not None:
            weight = ops.cast(sample_weight, "float64")
            mask = mask * (weight[:, None] if len(weight.shape) == 1 else weight)
        self.correct.assign_add(ops.sum(hit * mask))
        self.total.assign_add(ops.sum(mask))

    def result(self):
        return ops.cast(ops.divide_no_nan(self.correct, self.total), "float32")

    def reset_state(self):
        self.correct.assign(0.0)
        self.total.assign(0.0)
