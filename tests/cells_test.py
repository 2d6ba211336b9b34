"""Our cells and Recurrent layer reproduce Keras's built-in layers with the same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm.cells import GRUCell, LSTMCell, SimpleRNNCell
from keras_rnnlm.fast.cell_backward import backward_rule
from keras_rnnlm.layers import Recurrent

PAIRS = [
    (SimpleRNNCell, keras.layers.SimpleRNN),
    (LSTMCell, keras.layers.LSTM),
    (GRUCell, keras.layers.GRU),
]
X = np.random.default_rng(0).normal(size=(4, 7, 5)).astype("float32")
# right-padded: lengths 7, 5, 2, 1
MASK = np.arange(7)[None, :] < np.array([7, 5, 2, 1])[:, None]


def _pair(ours, theirs, go_backwards=False, **kwargs):
    keras_layer = theirs(
        6, return_sequences=True, return_state=True, go_backwards=go_backwards, **kwargs
    )
    keras_layer.build(X.shape)
    # non-zero biases so that bias layout errors show
    keras_layer.cell.set_weights(
        [
            w + 0.1 * np.random.default_rng(1).normal(size=w.shape)
            for w in keras_layer.cell.get_weights()
        ]
    )
    layer = Recurrent(
        ours(6, **kwargs), return_sequences=True, return_state=True, go_backwards=go_backwards
    )
    layer.build(X.shape)
    layer.cell.set_weights(keras_layer.cell.get_weights())
    return layer, keras_layer


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=lambda c: getattr(c, "__name__", ""))
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
def test_same_outputs_as_keras(ours, theirs, masked, go_backwards):
    layer, keras_layer = _pair(ours, theirs, go_backwards)
    mask = MASK if masked else None
    expected = [np.asarray(t) for t in keras_layer(X, mask=mask)]
    got = [np.asarray(t) for t in layer(X, mask=mask)]
    assert len(got) == len(expected)
    real = np.ones(MASK.shape, bool) if mask is None else (mask[:, ::-1] if go_backwards else mask)
    np.testing.assert_allclose(got[0][real], expected[0][real], atol=1e-5)  # outputs at real steps
    for g, e in zip(got[1:], expected[1:]):  # final states
        np.testing.assert_allclose(g, e, atol=1e-5)
    if masked:  # masked steps output zeros
        assert np.all(got[0][~real] == 0)


def test_gru_reset_before():
    layer, keras_layer = _pair(GRUCell, keras.layers.GRU, reset_after=False)
    np.testing.assert_allclose(layer(X, mask=MASK)[1], keras_layer(X, mask=MASK)[1], atol=1e-5)


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=lambda c: getattr(c, "__name__", ""))
def test_cells_run_inside_keras_rnn(ours, theirs):
    keras_layer = theirs(6, return_sequences=True)
    keras_layer.build(X.shape)
    wrapped = keras.layers.RNN(ours(6), return_sequences=True)
    wrapped.build(X.shape)
    wrapped.cell.set_weights(keras_layer.cell.get_weights())
    np.testing.assert_allclose(
        wrapped(X, mask=MASK)[MASK], keras_layer(X, mask=MASK)[MASK], atol=1e-5
    )


def test_lstm_forget_bias_starts_at_one():
    cell = LSTMCell(3)
    cell.build((None, 2))
    np.testing.assert_array_equal(np.asarray(cell.bias), [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])


def test_initial_state_in_final_state_out():
    layer = Recurrent(LSTMCell(6), return_state=True)
    _, h, c = layer(X[:, :4])
    # continuing from the state equals one pass over the whole sequence
    _, h2, c2 = layer(X[:, 4:], initial_state=[h, c])
    _, h_all, c_all = layer(X)
    np.testing.assert_allclose(h2, h_all, atol=1e-5)
    np.testing.assert_allclose(c2, c_all, atol=1e-5)


@pytest.mark.parametrize("cell", [SimpleRNNCell, LSTMCell, GRUCell])
def test_compiles_with_xla(cell):
    layer = Recurrent(cell(6), return_sequences=True)
    eager = np.asarray(layer(X, mask=MASK))
    compiled = tf.function(lambda x, m: layer(x, mask=m), jit_compile=True)
    np.testing.assert_allclose(compiled(X, MASK), eager, atol=1e-5)


@pytest.mark.parametrize("cell", [SimpleRNNCell, LSTMCell, GRUCell])
def test_cell_config_round_trip(cell):
    original = cell(5, use_bias=False)
    clone = cell.from_config(original.get_config())
    assert clone.get_config() == original.get_config()


def test_invalid_units():
    with pytest.raises(ValueError, match="units"):
        LSTMCell(0)


@pytest.mark.parametrize("cell_class", [SimpleRNNCell, LSTMCell])
def test_step_with_residuals_is_step(cell_class):
    # the hand-written backward's forward half computes exactly the cell's step
    cell = cell_class(6)
    cell.build((None, 5))
    projected = cell.project_inputs(X[:, 0])
    states = [
        tf.constant(np.random.default_rng(i).normal(size=(4, 6)), "float32")
        for i in range(len(cell.get_initial_state(4)))
    ]
    _, expected = cell.step(projected, states)
    step_with_residuals = backward_rule(cell)[0]  # the fast path's forward half
    states_out, residuals = step_with_residuals(cell, projected, states, cell.recurrent_kernel)
    for ours, reference in zip(states_out, expected, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)
    assert residuals.shape[0] == 4


# Golden values: hand-chosen weights, outputs written out from the lecture's equations in
# numpy (not from Keras), two steps so that the recurrence is exercised.
GOLD_X = np.array([[[1.0, -0.5, 0.25], [0.0, 2.0, -1.0]]], "float32")  # (batch 1, time 2, 3)
GOLD_UNITS = 2


def _gold_weights(shape, offset):
    """Small distinct hand-chosen values: 0.1 * ((i * 7 + offset) % 11 - 5)."""
    n = int(np.prod(shape))
    return (0.1 * (((np.arange(n) * 7 + offset) % 11) - 5)).reshape(shape).astype("float32")


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def _run_cell(cell, states):
    cell.build((None, 3))
    weights = [_gold_weights(w.shape, i + 1) for i, w in enumerate(cell.weights)]
    cell.set_weights(weights)
    outputs = []
    for t in range(GOLD_X.shape[1]):
        output, states = cell.call(tf.constant(GOLD_X[:, t]), states)
        outputs.append(np.asarray(output))
    return weights, outputs, [np.asarray(s) for s in states]


def test_golden_simple_rnn_literal_values():
    cell = SimpleRNNCell(2)
    cell.build((None, 2))
    cell.set_weights(
        [np.array([[0.5, 0.0], [0.0, 0.0]]), np.eye(2), np.array([0.0, 0.1])]  # W_x, W_h, b
    )
    h, _ = cell.call(tf.constant([[1.0, 3.0]]), [tf.constant([[0.2, -0.4]])])
    # a = x W_x + h W_h + b = [0.5 + 0.2, 0 - 0.4 + 0.1]
    np.testing.assert_allclose(np.asarray(h), [[np.tanh(0.7), np.tanh(-0.3)]], rtol=1e-6)


def test_golden_simple_rnn():
    (w_x, w_h, b), outputs, _ = _run_cell(SimpleRNNCell(GOLD_UNITS), [tf.zeros((1, 2))])
    h = np.zeros((1, 2))
    for t in range(2):
        h = np.tanh(GOLD_X[:, t] @ w_x + h @ w_h + b)
        np.testing.assert_allclose(outputs[t], h, rtol=1e-5, atol=1e-6)


def test_golden_lstm():
    cell = LSTMCell(GOLD_UNITS)
    h0, c0 = np.array([[0.3, -0.2]]), np.array([[0.5, 1.0]])
    (w_x, w_h, b), outputs, (h_last, c_last) = _run_cell(
        cell, [tf.constant(h0, "float32"), tf.constant(c0, "float32")]
    )
    h, c = h0, c0
    u = GOLD_UNITS
    for t in range(2):
        z = GOLD_X[:, t] @ w_x + h @ w_h + b
        i = _sig(z[:, 0:u])  # gate order i, f, c, o
        f = _sig(z[:, u : 2 * u])
        g = np.tanh(z[:, 2 * u : 3 * u])
        o = _sig(z[:, 3 * u : 4 * u])
        c = f * c + i * g
        h = o * np.tanh(c)
        np.testing.assert_allclose(outputs[t], h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c_last, c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h_last, h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reset_after", [True, False])
def test_golden_gru(reset_after):
    cell = GRUCell(GOLD_UNITS, reset_after=reset_after)
    h0 = np.array([[0.4, -0.6]])
    (w_x, w_h, b), outputs, _ = _run_cell(cell, [tf.constant(h0, "float32")])
    u = GOLD_UNITS
    b_x, b_h = (b[0], b[1]) if reset_after else (b, np.zeros_like(b))
    h = h0
    for t in range(2):
        x = GOLD_X[:, t]
        x_z, x_r, x_h = (
            x @ w_x[:, k * u : (k + 1) * u] + b_x[k * u : (k + 1) * u] for k in range(3)
        )
        h_z = h @ w_h[:, 0:u] + b_h[0:u]  # gate order z, r, h
        h_r = h @ w_h[:, u : 2 * u] + b_h[u : 2 * u]
        z = _sig(x_z + h_z)
        r = _sig(x_r + h_r)
        if reset_after:  # reset applied to the recurrent projection (Keras's default, cuDNN)
            n = np.tanh(x_h + r * (h @ w_h[:, 2 * u :] + b_h[2 * u :]))
        else:  # the original paper: reset applied to h before the product
            n = np.tanh(x_h + (r * h) @ w_h[:, 2 * u :])
        h = z * h + (1.0 - z) * n
        np.testing.assert_allclose(outputs[t], h, rtol=1e-5, atol=1e-6)
