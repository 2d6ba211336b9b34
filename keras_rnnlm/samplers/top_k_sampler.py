"""Top-k sampling: sample among the ``k`` most probable tokens."""

import keras
import tensorflow as tf

from keras_rnnlm.samplers.base import PACKAGE, Sampler, draw, is_python_number


@keras.saving.register_keras_serializable(package=PACKAGE)
class TopKSampler(Sampler):
    """Sample among the ``k`` most probable tokens only (renormalised).

    Candidates are ordered by probability, ties by id (``tf.math.top_k``), and exactly ``k`` are
    kept, even when the ``k``-th probability is tied with the next.

    Args:
        k: number of candidates kept per step: a Python int, or a scalar int32 tensor inside a
            traced function (then every step sorts the whole vocabulary).
        **kwargs: ``Sampler`` arguments (``temperature``, ``seed``, ``suppressed_token_ids``).

    Example:

    >>> generate(model, [[2, 17]], TopKSampler(k=5, seed=0), max_length=10)
    """

    def __init__(self, k: int = 5, **kwargs):
        super().__init__(**kwargs)
        if is_python_number(k):
            if k < 1:
                raise ValueError(f"k must be >= 1, got {k}.")
            k = int(k)
        self.k = k

    def get_next_token(self, probabilities, seed):
        vocabulary_size = probabilities.shape[-1]
        if isinstance(self.k, int):
            k = min(self.k, vocabulary_size or self.k)
            top_probabilities, top_ids = tf.math.top_k(probabilities, k=k)  # (batch, k)
        else:  # tensor k: sort everything, keep the first k positions
            vocabulary_size = vocabulary_size or tf.shape(probabilities)[-1]
            top_probabilities, top_ids = tf.math.top_k(probabilities, k=vocabulary_size)
            kept = tf.range(vocabulary_size) < tf.cast(self.k, "int32")
            top_probabilities = tf.where(kept[None, :], top_probabilities, 0.0)
        choice = draw(top_probabilities, seed)  # (batch,)
        return tf.gather(top_ids, choice, batch_dims=1)

    def get_config(self):
        return {**super().get_config(), "k": self.k}
