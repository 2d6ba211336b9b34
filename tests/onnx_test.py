"""ONNX export (tf2onnx): step and score parity with onnxruntime at batch 1 and padded batches."""

import json

import numpy as np
import pytest
import tensorflow as tf
from deploy_helpers import require, tiny_trained_model

from keras_rnnlm.data.vocabulary import Vocabulary
from keras_rnnlm.deploy import export_model
from keras_rnnlm.samplers import GreedySampler, TopKSampler, generate_text

SEQUENCE_LENGTH = 10


onnxruntime = require("onnxruntime")
require("tf2onnx")


@pytest.fixture(scope="module", params=["lstm", "gru"])
def exported(request, tmp_path_factory):
    model, vocab = tiny_trained_model(request.param, embedding_dim=6, seed=11)
    out = tmp_path_factory.mktemp("onnx") / request.param
    export_model(model, out, "onnx", vocabulary=vocab, sequence_length=SEQUENCE_LENGTH)
    return model, vocab, out


def _padded_batch(vocab_size, lengths, time, seed):
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), time), np.int32)
    for row, length in enumerate(lengths):
        ids[row, :length] = [2, *rng.integers(4, vocab_size, size=length - 1)]
    return ids


@pytest.mark.parametrize("lengths", [[SEQUENCE_LENGTH], [SEQUENCE_LENGTH, 3, 7]])
def test_step_matches_the_keras_forward_pass(exported, lengths):
    model, vocab, out = exported
    session = onnxruntime.InferenceSession(str(out / "step.onnx"))
    state_names = json.loads((out / "model_card.json").read_text())["state_names"]
    ids = _padded_batch(vocab.size, lengths, SEQUENCE_LENGTH, seed=len(lengths))
    expected = np.asarray(model(ids))  # the masked time-loop forward pass
    states = {n: np.zeros((len(lengths), 8), np.float32) for n in state_names}
    outputs = ["logits"] + [f"{n}_out" for n in state_names]
    for t in range(SEQUENCE_LENGTH):
        logits, *new = session.run(outputs, {"token": ids[:, t], **states})
        real = ids[:, t] > 0
        np.testing.assert_allclose(logits[real], expected[real, t], atol=1e-4, rtol=0)
        for name, value in zip(state_names, new):  # padding keeps a row's states
            np.testing.assert_array_equal(value[~real], states[name][~real])
        states = dict(zip(state_names, new))


@pytest.mark.parametrize("lengths", [[SEQUENCE_LENGTH], [4, SEQUENCE_LENGTH, 2, 6]])
def test_score_matches_the_keras_log_probabilities(exported, lengths):
    model, vocab, out = exported
    session = onnxruntime.InferenceSession(str(out / "score.onnx"))
    ids = _padded_batch(vocab.size, lengths, SEQUENCE_LENGTH, seed=5)
    (got,) = session.run(["token_log_probs"], {"token_ids": ids})
    log_probs = np.asarray(tf.nn.log_softmax(model(ids)))
    next_ids = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)
    expected = np.take_along_axis(log_probs, next_ids[..., None], axis=-1)[..., 0]
    expected = np.where(next_ids > 0, expected, 0.0)
    assert got.shape == (len(lengths), SEQUENCE_LENGTH)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_host_generation_through_onnx_equals_the_library(exported):
    from keras_rnnlm.deploy.host import OnnxStep, generate_text_with_step

    model, vocab, out = exported
    prompts = ["the", "a dog sat on the"]  # different lengths: one padded batch
    step = OnnxStep(out / "step.onnx")
    for sampler in (GreedySampler(), TopKSampler(k=5, seed=3)):
        reference = [r[0] for r in generate_text(model, vocab, prompts, sampler, max_new_tokens=8)]
        assert generate_text_with_step(step, vocab, prompts, sampler, 8) == reference
    assert reference != [""] * 2


def test_card_records_the_format(exported):
    model, vocab, out = exported
    card = json.loads((out / "model_card.json").read_text())
    assert card["format"] == "onnx" and card["score_sequence_length"] == SEQUENCE_LENGTH
    assert card["config"]["cell"] == model.cell
    assert Vocabulary.load(out / "vocabulary.json") == vocab
    assert card["file_bytes"]["step.onnx"] == (out / "step.onnx").stat().st_size
