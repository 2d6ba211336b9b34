"""Nucleus (top-p) sampling."""

import keras
import tensorflow as tf

from keras_rnnlm.samplers.base import PACKAGE, Sampler, draw, is_python_number


@keras.saving.register_keras_serializable(package=PACKAGE)
class TopPSampler(Sampler):
    """Nucleus sampling: sample among the smallest set of top tokens with mass >= ``p``.

    Tokens are sorted by probability; a token is kept when the mass of the tokens before it
    is below ``p`` (so the most probable token is always kept and the token that crosses
    ``p`` is included).

    Args:
        p: nucleus mass in ``(0, 1]`` (a Python float, or a scalar float tensor inside a traced
            function).
        k: optional cap on the nucleus size (sorts only the ``k`` best; faster on big vocabularies).
        **kwargs: ``Sampler`` arguments.

    Example:

    >>> generate(model, [[2, 17]], TopPSampler(p=0.9, seed=0), max_length=10)
    """

    def __init__(self, p: float = 0.9, k: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if is_python_number(p):
            if not 0.0 < p <= 1.0:
                raise ValueError(f"p must be in (0, 1], got {p}.")
            p = float(p)
        self.p = p
        self.k = k

    def get_next_token(self, probabilities, seed):
        k = self.k or probabilities.shape[-1] or tf.shape(probabilities)[-1]
        sorted_probabilities, sorted_ids = tf.math.top_k(probabilities, k=k)  # (batch, k)
        mass_before = tf.cumsum(sorted_probabilities, axis=-1, exclusive=True)
        kept = tf.where(mass_before < tf.cast(self.p, "float32"), sorted_probabilities, 0.0)
        choice = draw(kept, seed)  # (batch,)
        return tf.gather(sorted_ids, choice, batch_dims=1)

    def get_config(self):
        return {**super().get_config(), "p": self.p, "k": self.k}
