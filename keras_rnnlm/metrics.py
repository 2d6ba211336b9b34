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
        # float32 pairs (value + compensation), no float64: TPUs have none (see CompensatedSum)
        self.total_nll = CompensatedSum(self, "total_nll")
        self.total_tokens = CompensatedSum(self, "total_tokens")

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
        self.total_nll.add(nll_sum)
        self.total_tokens.add(num_tokens)

    def mean_nll(self):
        return ops.divide_no_nan(self.total_nll.value(), self.total_tokens.value())

    def result(self):
        return ops.exp(self.mean_nll())

    def reset_state(self):
        self.total_nll.reset()
        self.total_tokens.reset()

    def get_config(self):
        return {**super().get_config(), "jit_compile": self.jit_compile}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BitsPerCharacter(Perplexity):
    """``total NLL / total real tokens / ln 2`` for character-level models (same streaming)."""

    def __init__(self, name="bits_per_character", jit_compile=False, **kwargs):
        super().__init__(name=name, jit_compile=jit_compile, **kwargs)

    def result(self):
        return self.mean_nll() / math.log(2.0)


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


class CompensatedSum:
    """A running float32 sum kept as two float32 metric variables, ``hi + lo`` (a
    "double-float": Knuth's TwoSum moves each addition's rounding error into ``lo``).

    About 48 significant bits without float64, which TPUs lack: over 1e6 per-batch additions
    the relative error stays near float32's last bit, ~1e-7 (``tests/losses_metrics_test.py``
    checks it against a float64 reference), where a plain float32 sum drifts by ~1e-5.
    Token counts stay exact up to ~2**48. Under several replicas each replica keeps its own
    pair and Keras sums the pairs (one float32 rounding, ~6e-8 relative).

    Args:
        metric: the metric owning the variables.
        name: prefix of their names.
    """

    def __init__(self, metric: keras.metrics.Metric, name: str):
        self.hi, self.lo = (
            metric.add_variable(shape=(), initializer="zeros", name=f"{name}_{part}")
            for part in ("hi", "lo")
        )

    def add(self, value) -> None:
        """Add a scalar (any real dtype, cast to float32)."""
        x = ops.cast(value, "float32")
        hi = ops.convert_to_tensor(self.hi)
        total = hi + x
        x_part = total - hi  # TwoSum: total + error == hi + x exactly
        error = (hi - (total - x_part)) + (x - x_part)
        lo = ops.convert_to_tensor(self.lo) + error
        new_hi = total + lo  # renormalise so that |lo| stays below hi's last bit
        self.lo.assign(lo - (new_hi - total))
        self.hi.assign(new_hi)

    def value(self):
        """The sum as float32 (``hi + lo`` rounded once)."""
        return ops.convert_to_tensor(self.hi) + ops.convert_to_tensor(self.lo)

    def reset(self) -> None:
        self.hi.assign(0.0)
        self.lo.assign(0.0)

    def __float__(self) -> float:  # eager: the pair summed in Python's float64, no rounding
        return float(ops.convert_to_numpy(self.hi)) + float(ops.convert_to_numpy(self.lo))

    def __int__(self) -> int:
        return round(float(self))
