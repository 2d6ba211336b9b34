"""Ancestral sampling from the whole (temperature-scaled) distribution."""

import keras

from keras_rnnlm.samplers.base import PACKAGE, Sampler, draw


@keras.saving.register_keras_serializable(package=PACKAGE)
class RandomSampler(Sampler):
    """Ancestral sampling from the whole (temperature-scaled) distribution.

    Example:

    >>> generate(model, [[2, 17]], RandomSampler(temperature=0.8, seed=3), max_length=10)
    """

    def get_next_token(self, probabilities, seed):
        return draw(probabilities, seed)
