"""The one exact-NLL loop: per-unit sums against a NumPy forward pass, cached compiled functions."""

import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm import evaluation
from keras_rnnlm.data.pipelines import sentence_dataset
from keras_rnnlm.data.vocabulary import BOS_ID, EOS_ID
from keras_rnnlm.evaluation import (
    evaluate_perplexity,
    evaluate_stream_perplexity,
    trace_count,
)
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.scoring import score_ids

SENTENCES = [[5, 6, 7], [8, 9], [4, 5, 6, 7, 8, 9, 10], [11]]


def _model(cell="lstm"):
    model = RNNLanguageModel(16, cell=cell, units=8, embedding_dim=8)
    model.build((None, None))
    return model


def _numpy_sentence_nll(model, ids):
    """NLL of ``<bos> ids <eos>`` from one unpadded forward pass, in float64 NumPy."""
    seq = np.array([BOS_ID, *ids, EOS_ID])
    logits = np.asarray(model(seq[None, :-1]), dtype=np.float64)[0]
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return -sum(log_probs[t, seq[t + 1]] for t in range(len(seq) - 1))


def test_static_units_are_per_sentence_nll_sums_and_counts():
    model = _model()
    dataset = sentence_dataset(SENTENCES, batch_size=3, shuffle=False)
    result = evaluate_perplexity(model, dataset, return_units=True)
    units = result["units"]
    expected = [_numpy_sentence_nll(model, ids) for ids in SENTENCES]
    # sentence_dataset may reorder by length: compare as multisets of (count, nll)
    got = sorted(zip(units["tokens"].tolist(), units["nll"].tolist()))
    want = sorted(zip([len(s) + 1 for s in SENTENCES], expected))
    for (n_got, nll_got), (n_want, nll_want) in zip(got, want, strict=True):
        assert n_got == n_want
        assert nll_got == pytest.approx(nll_want, abs=1e-4)
    total = sum(expected) / sum(len(s) + 1 for s in SENTENCES)
    assert result["nll_per_token"] == pytest.approx(total, rel=1e-5)
    assert result["tokens"] == sum(len(s) + 1 for s in SENTENCES)


def test_scoring_and_static_evaluation_share_one_loop():
    model = _model("gru")
    scores = score_ids(model, SENTENCES, batch_size=2)
    for ids, score in zip(SENTENCES, scores, strict=True):
        assert -score.log_prob == pytest.approx(_numpy_sentence_nll(model, ids), abs=1e-4)
    static = evaluate_perplexity(model, sentence_dataset(SENTENCES, 4, shuffle=False))
    total = -sum(s.log_prob for s in scores) / sum(s.num_tokens for s in scores)
    assert static["nll_per_token"] == pytest.approx(total, rel=1e-6)


def test_stream_units_are_windows_and_carry_the_state():
    model = _model()
    stream = np.array([3, 5, 6, 7, 3, 8, 9, 3, 4, 5, 6, 7, 8, 9, 10, 3, 11, 3], np.int32)
    result = evaluate_stream_perplexity(model, stream, window=5, return_units=True)
    # 17 targets in windows of 5: 5, 5, 5, 2
    assert result["units"]["tokens"].tolist() == [5, 5, 5, 2]
    logits = np.asarray(model(stream[None, :-1]), dtype=np.float64)[0]
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    nll = -log_probs[np.arange(len(stream) - 1), stream[1:]]
    expected = [nll[i : i + 5].sum() for i in range(0, 17, 5)]
    np.testing.assert_allclose(result["units"]["nll"], expected, atol=1e-4)


def test_a_second_call_with_the_same_shapes_does_not_retrace():
    model = _model()
    dataset = sentence_dataset(SENTENCES, batch_size=4, shuffle=False)
    first = evaluate_perplexity(model, dataset)
    traced = trace_count(model, ("sequence", False))
    assert traced >= 1
    assert evaluate_perplexity(model, dataset) == first
    assert trace_count(model, ("sequence", False)) == traced

    score_ids(model, SENTENCES, batch_size=4)
    traced = trace_count(model, ("sequence", True))
    assert traced >= 1
    score_ids(model, SENTENCES, batch_size=4)
    assert trace_count(model, ("sequence", True)) == traced

    stream = np.arange(3, 16, dtype=np.int32)
    evaluate_stream_perplexity(model, stream, window=4)
    traced = trace_count(model, "stream")
    assert traced == 1  # every window has the same shape, the last one is padded
    evaluate_stream_perplexity(model, stream, window=4)
    assert trace_count(model, "stream") == 1


def test_the_cache_is_per_model_and_not_saved(tmp_path):
    import keras

    first, second = _model(), _model()
    evaluation.sequence_nll_function(first)
    assert evaluation.sequence_nll_function(first) is evaluation.sequence_nll_function(first)
    assert evaluation.sequence_nll_function(first) is not evaluation.sequence_nll_function(second)
    assert not any("rnnlm_function_cache" in v.path for v in first.variables)
    first.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    assert getattr(reloaded, "_rnnlm_function_cache", None) is None
    x = tf.constant([[2, 5, 6]])
    np.testing.assert_allclose(reloaded(x), first(x), atol=1e-6)


def test_empty_data_is_refused():
    with pytest.raises(ValueError, match="no real target"):
        evaluation.perplexity_summary(0.0, 0.0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        evaluate_stream_perplexity(_model(), np.array([3]))
