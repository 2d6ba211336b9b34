"""Shared by litert_test.py and onnx_test.py: the optional-extra guard and a tiny trained LM."""

import importlib
import os

import pytest
import tensorflow as tf

from keras_rnnlm.data.vocabulary import Vocabulary
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.samplers import pad_prompts
from keras_rnnlm.training import compile_language_model

SENTENCES = ["the cat sat on the mat .", "a dog sat on a log !", "the dog and the cat"]


def require(module: str):
    """Import an optional extra: under ``CI=true`` a missing one fails, elsewhere it skips."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def tiny_trained_model(cell: str = "lstm", embedding_dim: int = 8, seed: int = 7):
    """A 2 x 8 model fit to ``SENTENCES`` (peaked, varied greedy continuations) and its vocab."""
    tf.keras.utils.set_random_seed(seed)
    vocab = Vocabulary.build(SENTENCES, lowercase=True)
    model = RNNLanguageModel(
        vocab.size, cell=cell, num_layers=2, units=8, embedding_dim=embedding_dim
    )
    compile_language_model(model, "adam", 0.05, jit_compile=False)
    x = pad_prompts([[2, *vocab.encode(s), 3] for s in SENTENCES] * 4)
    model.fit(x[:, :-1], x[:, 1:], epochs=40, batch_size=12, verbose=0)
    return model, vocab
