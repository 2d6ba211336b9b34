"""Our cells and Recurrent layer reproduce Keras's built-in layers with the same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm.cells import GRUCell, LSTMCell, SimpleRNNCell
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
    states_out, residuals = cell.step_with_residuals(projected, states, cell.recurrent_kernel)
    for ours, reference in zip(states_out, expected, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)
    assert residuals.shape[0] == 4
