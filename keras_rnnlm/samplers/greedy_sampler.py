"""Greedy decoding: always the most probable token."""

import keras
import tensorflow as tf

from keras_rnnlm.samplers.base import PACKAGE, Sampler


@keras.saving.register_keras_serializable(package=PACKAGE)
class GreedySampler(Sampler):
    """Always the most probable token (deterministic; ``temperature`` has no effect).

    Example:

    >>> generate(model, [[2, 17]], GreedySampler(), max_new_tokens=10)
    """

    def get_next_token(self, probabilities, seed):
        return tf.argmax(probabilities, axis=-1, output_type="int32")
