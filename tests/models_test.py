"""RNNLanguageModel: causality, padding invariance, built-in layer option, saving."""

import keras
import numpy as np
import pytest

from keras_rnnlm.models import RNNLanguageModel

V = 30
IDS = np.array([[2, 5, 9, 4, 7, 3], [2, 8, 8, 3, 0, 0], [2, 11, 0, 0, 0, 0]])
CONFIGS = [
    dict(cell="lstm"),
    dict(cell="gru"),
    dict(cell="simple_rnn", num_layers=1),
    dict(cell="lstm", num_layers=3, residual=True, tie_embeddings=True),
]


def _model(**kwargs):
    kwargs = {"units": 8, "embedding_dim": 8, **kwargs}
    model = RNNLanguageModel(V, **kwargs)
    model.build((None, None))
    return model


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_causal(config):
    model = _model(**config)
    logits = np.asarray(model(IDS))
    for t in range(1, IDS.shape[1]):
        changed = IDS.copy()
        changed[:, t] = np.where(
            changed[:, t] > 0, (changed[:, t] % (V - 4)) + 4 + (changed[:, t] == 29), 0
        )
        changed[0, t] = 17 if IDS[0, t] != 17 else 18
        new = np.asarray(model(changed))
        np.testing.assert_array_equal(new[:, :t], logits[:, :t])  # the past never moves
        assert not np.allclose(new[0, t], logits[0, t])  # the changed token itself matters


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_padding_invariant(config):
    model = _model(**config)
    logits = np.asarray(model(IDS))
    padded = np.concatenate([IDS, np.zeros((3, 5), IDS.dtype)], axis=1)
    logits_padded = np.asarray(model(padded))
    real = IDS != 0
    np.testing.assert_allclose(logits_padded[:, :6][real], logits[real], atol=1e-6)
    # and each row alone, unpadded, gives the same logits
    for row in range(3):
        n = int(real[row].sum())
        np.testing.assert_allclose(
            np.asarray(model(IDS[row : row + 1, :n]))[0], logits[row, :n], atol=1e-5
        )


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple_rnn"])
def test_builtin_layers_same_weights_same_logits(cell):
    ours = _model(cell=cell)
    builtin = _model(cell=cell, use_builtin_layers=True)
    builtin.set_weights(ours.get_weights())
    real = IDS != 0
    np.testing.assert_allclose(
        np.asarray(builtin(IDS))[real], np.asarray(ours(IDS))[real], atol=1e-5
    )


@pytest.mark.parametrize("config", CONFIGS + [dict(use_builtin_layers=True, dropout=0.3)], ids=str)
def test_keras_file_round_trip_exact(config, tmp_path):
    model = _model(**config)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, RNNLanguageModel)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(loaded(IDS)), np.asarray(model(IDS)))


def test_forward_returns_final_states_of_last_real_token():
    model = _model()
    _, states = model.forward(IDS)
    _, alone = model.forward(IDS[1:2, :4])
    for layer_states, layer_alone in zip(states, alone):
        for s, a in zip(layer_states, layer_alone):
            np.testing.assert_allclose(np.asarray(s)[1], np.asarray(a)[0], atol=1e-6)


def test_init_scale_bounds_weights():
    model = _model(init_scale=0.05)
    for w in model.trainable_weights:
        if "bias" not in w.path:
            assert np.abs(np.asarray(w)).max() <= 0.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="tie_embeddings"):
        RNNLanguageModel(V, units=8, embedding_dim=4, tie_embeddings=True)
    with pytest.raises(ValueError, match="Unknown cell"):
        RNNLanguageModel(V, cell="transformer")
    with pytest.raises(ValueError, match="vocabulary_size"):
        RNNLanguageModel(1)


@pytest.mark.parametrize("tie", [False, True], ids=["dense", "tied"])
def test_bfloat16_output_layer_close_to_float32_and_round_trips(tie, tmp_path):
    model = _model(tie_embeddings=tie)
    bf16 = model.clone_with(output_dtype="bfloat16")
    assert [w.dtype for w in bf16.weights] == [w.dtype for w in model.weights]  # fp32 masters
    logits = np.asarray(bf16(IDS))
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, np.asarray(model(IDS)), atol=2e-2)
    path = tmp_path / "bf16.keras"
    bf16.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config()["output_dtype"] == "bfloat16"
    assert loaded.get_config() == bf16.get_config()
    np.testing.assert_array_equal(np.asarray(loaded(IDS)), logits)
    step_logits, _ = loaded.step(IDS[:, 0], loaded.get_initial_state(len(IDS)))
    np.testing.assert_allclose(np.asarray(step_logits), logits[:, 0], atol=1e-5)
    with pytest.raises(ValueError, match="output_dtype"):
        RNNLanguageModel(V, output_dtype="float16")


def test_low_precision_dense_gradients_equal_autodiff_of_the_same_formula():
    # the hand-written gradient (the bias gradient as the last row of [x, 1]^T @ dy) against
    # TensorFlow's automatic differentiation of cast -> matmul -> cast -> add, and the float32
    # layer within bf16 error
    import tensorflow as tf

    from keras_rnnlm.fast.output_layer import low_precision_dense

    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.normal(size=(12, 8)), tf.float32)
    kernel = tf.constant(rng.normal(size=(8, 40)) * 0.3, tf.float32)
    bias = tf.constant(rng.normal(size=(40,)), tf.float32)
    upstream = tf.constant(rng.normal(size=(12, 40)), tf.float32)

    def reference(x, w, b):
        product = tf.matmul(tf.cast(x, tf.bfloat16), tf.cast(w, tf.bfloat16))
        return tf.cast(product, tf.float32) + b

    results = []
    for fn in (lambda x, w, b: low_precision_dense(x, w, b, tf.bfloat16), reference):
        with tf.GradientTape() as tape:
            tape.watch([inputs, kernel, bias])
            logits = fn(inputs, kernel, bias)
            loss = tf.reduce_sum(logits * upstream)
        results.append([logits, *tape.gradient(loss, [inputs, kernel, bias])])
    for ours, theirs in zip(results[0][:3], results[1][:3], strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    # the bias gradient sums the bfloat16-rounded upstream (as the kernel gradient does):
    # within 2^-9 of each |upstream| term plus the result's own rounding
    bound = 2**-9 * np.abs(upstream).sum(0) + 2**-8 * np.abs(results[1][3])
    np.testing.assert_array_less(np.abs(results[0][3] - results[1][3]), bound)
    np.testing.assert_allclose(results[1][3], tf.reduce_sum(upstream, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[0][0], inputs @ kernel + bias, atol=0.05)
    np.testing.assert_allclose(results[0][2], tf.transpose(inputs) @ upstream, rtol=0.02, atol=0.05)
