"""Dynamic evaluation against independent references, on tiny models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm.data.pipelines import document_stream, token_stream
from keras_rnnlm.data.vocabulary import EOS_ID, Vocabulary
from keras_rnnlm.dynamic_evaluation import (
    DEFAULT_EPSILON,
    dynamic_stream_units,
    gradient_rms,
    static_and_dynamic,
)
from keras_rnnlm.dynamic_text import text_file_documents
from keras_rnnlm.evaluation import evaluate_stream_perplexity
from keras_rnnlm.models import RNNLanguageModel

VOCABULARY = 11


def _tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = RNNLanguageModel(VOCABULARY, num_layers=2, units=6, embedding_dim=5)
    model.build((None, None))
    return model


def _stream(n, seed=1):
    return np.random.default_rng(seed).integers(1, VOCABULARY, size=n).astype(np.int32)


def _reference_loss(model, inputs, targets, states):
    """Mean NLL per real token with Keras's own cross-entropy (not ``nll_sums``)."""
    logits, new_states = model.forward(inputs, initial_state=states)
    nll = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    mask = tf.cast(targets != 0, nll.dtype)
    return tf.reduce_sum(nll * mask), tf.reduce_sum(mask), new_states


def test_gradient_rms_is_the_root_mean_square_of_eager_segment_gradients():
    model = _tiny_model()
    stream = _stream(200)
    rms, info = gradient_rms(model, stream, segment_length=7, rows=3)
    assert info == {"tokens": 189, "segments": 9, "rows": 3, "segment_length": 7}
    rows = stream[: 3 * (200 // 3)].reshape(3, -1)
    squares = [np.zeros(v.shape) for v in model.trainable_variables]
    states = model.get_initial_state(3)
    for start in range(0, 9 * 7, 7):
        x, y = rows[:, start : start + 7], rows[:, start + 1 : start + 8]
        with tf.GradientTape() as tape:
            total, count, states = _reference_loss(model, x, y, states)
            loss = total / count
        for square, g in zip(squares, tape.gradient(loss, model.trainable_variables)):
            square += tf.convert_to_tensor(g).numpy().astype(np.float64) ** 2
    for got, square in zip(rms, squares, strict=True):
        np.testing.assert_allclose(got, np.sqrt(square / 9), rtol=2e-4, atol=1e-8)


def test_learning_rate_zero_gives_the_static_stream_nll():
    model = _tiny_model()
    stream = _stream(95)
    rms = [np.full(v.shape, 0.05, np.float32) for v in model.trainable_variables]
    static = evaluate_stream_perplexity(model, stream, window=10, return_units=True)
    dynamic = dynamic_stream_units(model, stream, rms, lr=0.0, decay=0.0, segment_length=10)
    np.testing.assert_array_equal(dynamic["units"]["tokens"], static["units"]["tokens"])
    np.testing.assert_allclose(dynamic["units"]["nll"], static["units"]["nll"], rtol=1e-6)
    assert dynamic["tokens"] == 94
    # a real learning rate changes the second segment on, never the first (scored before)
    moved = dynamic_stream_units(model, stream, rms, lr=1e-2, decay=0.0, segment_length=10)
    assert moved["units"]["nll"][0] == pytest.approx(static["units"]["nll"][0], rel=1e-6)
    assert abs(moved["units"]["nll"][1] - static["units"]["nll"][1]) > 1e-4


def test_two_segments_match_a_numpy_score_then_update_reference():
    model = _tiny_model()
    stream = _stream(17)  # 16 targets: two segments of 8
    rng = np.random.default_rng(3)
    rms = [rng.uniform(0.01, 0.1, v.shape).astype(np.float32) for v in model.trainable_variables]
    lr, decay = 0.05, 0.3
    before = [v.numpy().copy() for v in model.trainable_variables]
    result = dynamic_stream_units(model, stream, rms, lr, decay, segment_length=8)

    reference = model.clone_with()  # fresh copy, eager tape, update in numpy
    theta_0 = [v.numpy().astype(np.float64) for v in reference.trainable_variables]
    sum_rms = sum(r.astype(np.float64).mean() for r in rms)
    states = reference.get_initial_state(1)
    nlls = []
    for start in (0, 8):
        x, y = stream[None, start : start + 8], stream[None, start + 1 : start + 9]
        with tf.GradientTape() as tape:
            total, count, states = _reference_loss(reference, x, y, states)
            loss = total / count
        nlls.append(float(total))
        gradients = tape.gradient(loss, reference.trainable_variables)
        for v, g, r, t0 in zip(reference.trainable_variables, gradients, rms, theta_0):
            theta = v.numpy().astype(np.float64)
            g = tf.convert_to_tensor(g).numpy()
            rate = np.minimum(decay * r / sum_rms, 1.0)
            v.assign(theta - lr * g / (r + DEFAULT_EPSILON) + rate * (t0 - theta))
    np.testing.assert_allclose(result["units"]["nll"], nlls, rtol=1e-5)
    assert abs(nlls[1] - _static_second_segment(model, stream)) > 1e-3  # the update mattered
    for v, b in zip(model.trainable_variables, before, strict=True):
        np.testing.assert_array_equal(v.numpy(), b)  # the given model was never touched


def _static_second_segment(model, stream):
    return evaluate_stream_perplexity(model, stream, window=8, return_units=True)["units"]["nll"][1]


def test_bad_arguments_are_refused_by_name():
    model = _tiny_model()
    rms = [np.ones(v.shape, np.float32) for v in model.trainable_variables]
    with pytest.raises(ValueError, match="lr and decay"):
        dynamic_stream_units(model, _stream(20), rms, lr=-1.0, decay=0.0)
    with pytest.raises(ValueError, match="rms does not match"):
        dynamic_stream_units(model, _stream(20), rms[:-1], lr=1.0, decay=0.0)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        dynamic_stream_units(model, _stream(1), rms, lr=1.0, decay=0.0)


# --- document resets (issue 18, item 5) --------------------------------------------------------


def _documents(lengths, seed=5):
    """One sentence per document, ``lengths`` ids each (ids 4.., never <eos>)."""
    rng = np.random.default_rng(seed)
    return [[list(rng.integers(4, VOCABULARY, size=n))] for n in lengths]


def _stepwise_loss(model, x, y, states, reset):
    """NLL sum, real-token count and final states of ``x`` -> ``y`` read one token at a time,
    each row's states multiplied by ``1 - reset[:, t]`` before token ``t``: resets written
    independently of ``evaluation.forward_with_reset``."""
    total, count = 0.0, 0.0
    for t in range(x.shape[1]):
        keep = tf.constant(1.0 - reset[:, t : t + 1], tf.float32)
        states = tf.nest.map_structure(lambda s, keep=keep: s * keep, states)
        logits, states = model.forward(x[:, t : t + 1], initial_state=states)
        nll = keras.losses.sparse_categorical_crossentropy(y[:, t : t + 1], logits, True)
        mask = tf.cast(y[:, t : t + 1] != 0, nll.dtype)
        total += tf.reduce_sum(nll * mask)
        count += tf.reduce_sum(mask)
    return total, count, states


def test_lr_zero_with_resets_scores_document_two_as_a_fresh_stream():
    model = _tiny_model()
    stream, reset = document_stream(_documents([7, 20]))  # document 2 runs to the end
    start = 7  # the <eos> ending document 1: the reset, and the start of segment 2 (of 7)
    assert np.flatnonzero(reset)[1] == start and stream[start] == EOS_ID
    rms = [np.full(v.shape, 0.05, np.float32) for v in model.trainable_variables]
    kwargs = {"rms": rms, "lr": 0.0, "decay": 0.0, "segment_length": 7}
    with_resets = dynamic_stream_units(model, stream, reset=reset, **kwargs)["units"]
    fresh = dynamic_stream_units(model, stream[start:], **kwargs)["units"]  # zero state
    np.testing.assert_array_equal(with_resets["tokens"][1:], fresh["tokens"])
    np.testing.assert_allclose(with_resets["nll"][1:], fresh["nll"], rtol=1e-5)
    carried = dynamic_stream_units(model, stream, **kwargs)["units"]
    assert abs(carried["nll"][1] - fresh["nll"][0]) > 1e-3  # document 1's state leaked in
    np.testing.assert_allclose(carried["nll"][0], with_resets["nll"][0], rtol=1e-6)
    # the static pass of static_and_dynamic takes the same resets
    both = static_and_dynamic(model, stream, reset=reset, B=50, block_tokens=7, **kwargs)
    assert both["dynamic_perplexity"] == pytest.approx(both["perplexity"], rel=1e-6)
    static = evaluate_stream_perplexity(model, stream, window=7, reset=reset)
    assert both["perplexity"] == pytest.approx(static["perplexity"], rel=1e-6)
    with pytest.raises(ValueError, match="aligned"):
        dynamic_stream_units(model, stream, reset=reset[:-1], **kwargs)


def test_with_resets_the_state_is_zeroed_but_the_adapted_weights_carry_over():
    """Semantics: at a document start the state is zeroed and the weights keep what the
    previous documents taught them; checked against an eager, token-by-token reference."""
    model = _tiny_model()
    stream, reset = document_stream(_documents([4, 6, 3, 8]))
    assert set(np.flatnonzero(reset)) == {0, 4, 11, 15}  # mid-segment and on segment starts
    rng = np.random.default_rng(3)
    rms = [rng.uniform(0.01, 0.1, v.shape).astype(np.float32) for v in model.trainable_variables]
    lr, decay, length = 0.05, 0.3, 5
    result = dynamic_stream_units(model, stream, rms, lr, decay, length, reset=reset)

    reference = model.clone_with()
    theta_0 = [v.numpy().astype(np.float64) for v in reference.trainable_variables]
    sum_rms = sum(r.astype(np.float64).mean() for r in rms)
    states = reference.get_initial_state(1)
    nlls = []
    for start in range(0, len(stream) - 1, length):
        x, y = stream[None, start : start + length], stream[None, start + 1 : start + 1 + length]
        x, r = x[:, : y.shape[1]], reset[None, start : start + y.shape[1]].astype(np.float32)
        with tf.GradientTape() as tape:
            total, count, states = _stepwise_loss(reference, x, y, states, r)
            loss = total / count
        nlls.append(float(total))
        gradients = tape.gradient(loss, reference.trainable_variables)
        for v, g, rm, t0 in zip(reference.trainable_variables, gradients, rms, theta_0):
            theta = v.numpy().astype(np.float64)
            rate = np.minimum(decay * rm / sum_rms, 1.0)
            step = -lr * tf.convert_to_tensor(g).numpy() / (rm + DEFAULT_EPSILON)
            v.assign(theta + step + rate * (t0 - theta))
    np.testing.assert_allclose(result["units"]["nll"], nlls, rtol=1e-5)
    # the weights carried over: document 4 (from 15, segment 4 from 15) is not scored as by a
    # fresh dynamic evaluation started there, whose first segment sees the trained weights
    fresh = dynamic_stream_units(model, stream[15:], rms, lr, decay, length)["units"]["nll"]
    static = evaluate_stream_perplexity(model, stream[15:], window=length, return_units=True)
    assert fresh[0] == pytest.approx(static["units"]["nll"][0], rel=1e-5)
    assert abs(result["units"]["nll"][3] - fresh[0]) > 1e-3


def test_gradient_rms_with_resets_matches_a_stepwise_reference():
    model = _tiny_model()
    stream, reset = document_stream(_documents([3, 9, 2, 5, 11, 4, 6, 7, 2, 8]))
    rms, info = gradient_rms(model, stream, segment_length=4, rows=3, reset=reset)
    n = len(stream) // 3
    rows, resets = stream[: 3 * n].reshape(3, -1), reset[: 3 * n].reshape(3, -1)
    segments = (n - 1) // 4
    assert info["segments"] == segments and info["resets"] == int(resets[:, : segments * 4].sum())
    squares = [np.zeros(v.shape) for v in model.trainable_variables]
    states = model.get_initial_state(3)
    for start in range(0, segments * 4, 4):
        x, y = rows[:, start : start + 4], rows[:, start + 1 : start + 5]
        r = resets[:, start : start + 4].astype(np.float32)
        with tf.GradientTape() as tape:
            total, count, states = _stepwise_loss(model, x, y, states, r)
            loss = total / count
        for square, g in zip(squares, tape.gradient(loss, model.trainable_variables)):
            square += tf.convert_to_tensor(g).numpy().astype(np.float64) ** 2
    for got, square in zip(rms, squares, strict=True):
        np.testing.assert_allclose(got, np.sqrt(square / segments), rtol=2e-4, atol=1e-8)
    carried, _ = gradient_rms(model, stream, segment_length=4, rows=3)
    assert any(not np.allclose(a, b, rtol=1e-3) for a, b in zip(carried, rms))


def test_text_file_documents_at_blank_lines_and_at_a_token(tmp_path):
    lines = ["the cat sat", "on the mat", "", "", "a dog ran", "", "the end"]
    vocabulary = Vocabulary.build(lines, sentence_start="<eos>")
    ids = {word: vocabulary.encode(word)[0] for word in "the cat sat on mat a dog ran end".split()}
    (tmp_path / "blank.txt").write_text("\n".join(lines) + "\n")
    stream, reset = text_file_documents(vocabulary, tmp_path / "blank.txt", "blank")
    words = "the cat sat . on the mat . a dog ran . the end .".split()
    expected = [EOS_ID if w == "." else ids[w] for w in words]
    np.testing.assert_array_equal(stream, expected)
    np.testing.assert_array_equal(np.flatnonzero(reset), [0, 7, 11])  # <eos> before "a", "the"
    token_lines = ["the cat sat", "<doc>", "on the mat", "a dog ran", " <doc> ", "the end"]
    (tmp_path / "token.txt").write_text("\n".join(token_lines) + "\n")
    stream, reset = text_file_documents(vocabulary, tmp_path / "token.txt", "<doc>")
    np.testing.assert_array_equal(stream, expected)  # the <doc> lines are not text
    np.testing.assert_array_equal(np.flatnonzero(reset), [0, 3, 11])
    # no boundary: the plain stream, no resets; a prefix keeps the two aligned
    plain, none = text_file_documents(vocabulary, tmp_path / "blank.txt", None)
    assert none is None
    np.testing.assert_array_equal(plain, token_stream([vocabulary.encode(x) for x in lines if x]))
    stream, reset = text_file_documents(vocabulary, tmp_path / "blank.txt", "blank", 9)
    assert len(stream) == len(reset) == 9
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no text"):
        text_file_documents(vocabulary, tmp_path / "empty.txt", "blank")
