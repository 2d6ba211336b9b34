"""Dynamic evaluation against independent references, on tiny models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm.dynamic_evaluation import DEFAULT_EPSILON, dynamic_stream_units, gradient_rms
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
