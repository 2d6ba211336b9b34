"""keras_rnnlm.inspection: gate activations recomputed by hand, models rebuilt from exports."""

import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm import RNNLanguageModel, compile_language_model
from keras_rnnlm.data import Vocabulary
from keras_rnnlm.export import export_saved_model
from keras_rnnlm.inspection import GATE_NAMES, load_language_model, lstm_gate_activations


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _hand_lstm(x, kernel, recurrent_kernel, bias):
    """The lecture's LSTM equations for one unpadded sequence ``x`` ``(time, features)``."""
    units = recurrent_kernel.shape[0]
    h = np.zeros(units)
    c = np.zeros(units)
    rows = {name: [] for name in GATE_NAMES}
    for x_t in x.astype(np.float64):
        z = x_t @ kernel + h @ recurrent_kernel + bias
        i = _sigmoid(z[:units])
        f = _sigmoid(z[units : 2 * units])
        g = np.tanh(z[2 * units : 3 * units])
        o = _sigmoid(z[3 * units :])
        c = f * c + i * g
        h = o * np.tanh(c)
        for name, value in zip(GATE_NAMES, (i, f, g, o, c, h), strict=True):
            rows[name].append(value)
    return {name: np.stack(values) for name, values in rows.items()}


@pytest.mark.parametrize("residual", [False, True])
def test_gates_match_hand_computed_equations_in_every_layer(residual):
    model = RNNLanguageModel(
        30, cell="lstm", num_layers=2, units=6, embedding_dim=6, residual=residual
    )
    model.build((None, None))
    rng = np.random.default_rng(0)
    for variable in model.weights:  # non-default values: gates far from 0.5, biases non-zero
        variable.assign(rng.normal(0, 0.6, variable.shape).astype("float32"))
    ids = np.array([[2, 5, 9, 11, 4, 7, 3], [2, 8, 6, 0, 0, 0, 0]], dtype=np.int32)

    x = np.asarray(model.embedding(ids), np.float64)  # (batch, time, 6)
    for layer in range(2):
        cell = model.rnn.rnn_layers[layer].cell
        weights = [np.asarray(w, np.float64) for w in cell.get_weights()]
        gates = lstm_gate_activations(model, ids, layer=layer)
        for row, length in enumerate((7, 3)):
            expected = _hand_lstm(x[row, :length], *weights)
            for name in GATE_NAMES:
                np.testing.assert_allclose(
                    gates[name][row, :length], expected[name], atol=1e-5, err_msg=name
                )
                assert np.all(gates[name][row, length:] == 0.0)  # padding reported as 0
        # The next layer reads this layer's hidden states (plus the skip when residual).
        hidden = np.zeros_like(x)
        for row, length in enumerate((7, 3)):
            hidden[row, :length] = _hand_lstm(x[row, :length], *weights)["hidden"]
        x = hidden + x if residual and layer > 0 else hidden

    # The last layer's hidden states are what the model feeds its output layer.
    logits = np.asarray(model(ids))
    expected_logits = np.asarray(model.logits_from_hidden(x.astype("float32")))
    np.testing.assert_allclose(logits[0], expected_logits[0], atol=1e-4)
    np.testing.assert_allclose(logits[1, :3], expected_logits[1, :3], atol=1e-4)


def test_one_dimensional_input_is_one_row_and_the_states_obey_the_equations():
    model = RNNLanguageModel(20, cell="lstm", num_layers=1, units=4, embedding_dim=3)
    gates = lstm_gate_activations(model, [2, 5, 6, 7])
    batched = lstm_gate_activations(model, [[2, 5, 6, 7], [2, 9, 0, 0]])
    assert gates["forget"].shape == (4, 4)
    for name in GATE_NAMES:
        np.testing.assert_array_equal(gates[name], batched[name][0], err_msg=name)
    # h_t = o_t tanh(c_t) and c_t = f_t c_{t-1} + i_t g_t, with c_0 = 0
    np.testing.assert_allclose(gates["hidden"], gates["output"] * np.tanh(gates["cell"]), atol=1e-6)
    previous = np.vstack([np.zeros((1, 4)), gates["cell"][:-1]])
    np.testing.assert_allclose(
        gates["cell"],
        gates["forget"] * previous + gates["input"] * gates["candidate"],
        atol=1e-6,
    )


def test_gates_refuse_non_lstm_models_and_bad_layers():
    with pytest.raises(ValueError, match="LSTM"):
        lstm_gate_activations(RNNLanguageModel(10, cell="gru", num_layers=1, units=4), [2, 5])
    with pytest.raises(ValueError, match="layer"):
        lstm_gate_activations(RNNLanguageModel(10, num_layers=1, units=4), [2, 5], layer=1)


@pytest.mark.parametrize("tie_embeddings", [False, True])
def test_load_language_model_reproduces_the_export(tmp_path, tie_embeddings):
    vocabulary = Vocabulary.build(["a b c d", "b c a e f"], level="word")
    model = RNNLanguageModel(
        vocabulary.size,
        num_layers=2,
        units=8,
        embedding_dim=8,
        tie_embeddings=tie_embeddings,
        stateful=True,
    )
    compile_language_model(model, jit_compile=False)
    x = np.array([[2, 5, 6, 7], [2, 6, 5, 4]], dtype=np.int32)
    model.fit(x, np.roll(x, -1, axis=1), batch_size=2, epochs=1, verbose=0)
    export = export_saved_model(model, vocabulary, tmp_path / "export")

    loaded, loaded_vocabulary = load_language_model(export)
    assert loaded_vocabulary == vocabulary
    assert not loaded.stateful
    stateless = model.clone_with(stateful=False)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(stateless(x)), atol=1e-6)
    served = tf.saved_model.load(str(export)).signatures["score"](token_ids=tf.constant(x))
    expected = tf.nn.log_softmax(loaded(x), axis=-1).numpy()
    np.testing.assert_allclose(served["log_probs"].numpy(), expected, atol=1e-5)


def test_load_language_model_needs_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_card"):
        load_language_model(tmp_path)
