"""Gradient diagnostics: finite differences, the c^k bound, the Jacobian spectrum, the monitor."""

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_rnnlm.experiments import floatx  # noqa: E402
from keras_rnnlm.gradients import (  # noqa: E402
    GradientNormMonitor,
    gradient_norms_by_distance,
    jacobian_spectrum,
    last_position_loss,
    plot_gradient_norm_trace,
    plot_norms_by_distance,
)
from keras_rnnlm.models import RNNLanguageModel  # noqa: E402
from keras_rnnlm.training import compile_language_model  # noqa: E402

VOCAB = 9


def _ids(batch, length, seed=0):
    return np.random.default_rng(seed).integers(1, VOCAB, size=(batch, length)).astype("int32")


@pytest.mark.parametrize("cell", ["simple_rnn", "gru", "lstm"])
def test_gradient_norms_match_finite_differences(cell):
    with floatx("float64"):
        model = RNNLanguageModel(VOCAB, cell=cell, num_layers=2, units=3, embedding_dim=2)
        ids = _ids(2, 6)
        model(ids)
        # larger weights than the defaults so that every path carries a sizeable gradient
        model.set_weights([w * 3.0 for w in model.get_weights()])
        norms = gradient_norms_by_distance(model, ids, max_distance=4)
        inputs, targets = ids[:, :-1], ids[:, -1]
        embedded = tf.convert_to_tensor(model.embedding(inputs))
        assert embedded.dtype == tf.float64
        eps = 1e-6
        num_steps = inputs.shape[1]

        def fd_mean_norm(width, perturb):
            grad = np.zeros((2, width))
            for b in range(2):
                for j in range(width):
                    delta = np.zeros((2, width))
                    delta[b, j] = eps
                    plus = float(perturb(tf.constant(delta)))
                    minus = float(perturb(tf.constant(-delta)))
                    grad[b, j] = (plus - minus) / (2 * eps)
            return np.mean(np.linalg.norm(grad, axis=1))

        state_names = ["h", "c"] if cell == "lstm" else ["h"]
        for k in (0, 2, 4):
            t = num_steps - 1 - k
            for layer in (0, 1):
                for index, name in enumerate(state_names):
                    estimate = fd_mean_norm(
                        3,
                        lambda d, layer=layer, t=t, index=index: last_position_loss(
                            model, embedded, targets, state_perturbations={(layer, t, index): d}
                        ),
                    )
                    measured = norms[name][layer, k]
                    assert estimate > 1e-8
                    assert abs(measured - estimate) <= 1e-3 * estimate, (name, layer, k)
            estimate = fd_mean_norm(
                2,
                lambda d, t=t: last_position_loss(
                    model, embedded, targets, input_perturbations={t: d}
                ),
            )
            assert abs(norms["input"][k] - estimate) <= 1e-3 * estimate, ("input", k)
    assert keras.config.floatx() == "float32"


@pytest.mark.parametrize("c", [0.3, 0.8, 0.95, 0.99])
def test_simple_rnn_ratios_never_exceed_c_to_the_k(c):
    with floatx("float64"):
        model = RNNLanguageModel(VOCAB, cell="simple_rnn", num_layers=1, units=16, embedding_dim=8)
        ids = _ids(8, 42, seed=1)
        model(ids)
        # large input weights push units into saturation, where tanh' < 1 matters
        cell = model.rnn.rnn_layers[0].cell
        cell.kernel.assign(cell.kernel * 5.0)
        model.embedding.embeddings.assign(model.embedding.embeddings * 20.0)
        q = np.linalg.qr(np.random.default_rng(0).standard_normal((16, 16)))[0]
        cell.recurrent_kernel.assign(c * q)
        norms = gradient_norms_by_distance(model, ids)
    k = norms["distance"]
    assert np.all(norms["h_ratio"][0] <= c**k * (1 + 1e-9))
    # the input gradient is W_x-projected h gradient: it obeys the same bound up to a constant
    assert norms["h_ratio"][0, 0] == 1.0


def test_norms_by_distance_shapes_and_validation():
    model = RNNLanguageModel(VOCAB, cell="lstm", num_layers=2, units=4, embedding_dim=3)
    ids = _ids(3, 9)
    norms = gradient_norms_by_distance(model, ids, max_distance=5)
    assert norms["h"].shape == norms["c"].shape == (2, 6)
    assert norms["input"].shape == (6,)
    np.testing.assert_allclose(norms["c_ratio"][:, 0], 1.0)
    explicit = gradient_norms_by_distance(model, ids[:, :-1], targets=ids[:, -1], max_distance=5)
    np.testing.assert_allclose(explicit["h"], norms["h"])
    with pytest.raises(ValueError, match="padding"):
        gradient_norms_by_distance(model, np.zeros((1, 4), "int32"))
    with pytest.raises(ValueError, match="max_distance"):
        gradient_norms_by_distance(model, ids, max_distance=8)


def test_norms_match_keras_builtin_layers():
    ids = _ids(2, 8)
    ours = RNNLanguageModel(VOCAB, cell="lstm", num_layers=1, units=4, embedding_dim=3)
    builtin = RNNLanguageModel(
        VOCAB, cell="lstm", num_layers=1, units=4, embedding_dim=3, use_builtin_layers=True
    )
    ours(ids)
    builtin(ids)
    builtin.set_weights(ours.get_weights())
    a = gradient_norms_by_distance(ours, ids)
    b = gradient_norms_by_distance(builtin, ids)
    np.testing.assert_allclose(a["c"], b["c"], rtol=1e-5)
    np.testing.assert_allclose(a["input"], b["input"], rtol=1e-5)


def test_jacobian_spectrum_of_scaled_orthogonal_simple_rnn():
    model = RNNLanguageModel(VOCAB, cell="simple_rnn", num_layers=2, units=6, embedding_dim=4)
    ids = _ids(3, 7)
    model(ids)
    q = np.linalg.qr(np.random.default_rng(2).standard_normal((6, 6)))[0]
    model.rnn.rnn_layers[1].cell.recurrent_kernel.assign(0.7 * q)
    spectrum = jacobian_spectrum(model, ids, layer=1)
    assert spectrum["step_max_singular"].shape == (3, 7)
    assert spectrum["recurrent_kernel_max_singular"] == pytest.approx(0.7, rel=1e-5)
    # diag(tanh') W_h^T: never larger than ||W_h||
    assert np.all(spectrum["step_max_singular"] <= 0.7 * (1 + 1e-5))
    lstm = RNNLanguageModel(VOCAB, cell="lstm", num_layers=1, units=5, embedding_dim=4)
    spectrum = jacobian_spectrum(lstm, ids)
    assert spectrum["recurrent_kernel_gate_max_singular"].shape == (4,)


def _batch():
    rng = np.random.default_rng(3)
    x = rng.integers(1, VOCAB, size=(8, 6)).astype("int32")
    y = rng.integers(1, VOCAB, size=(8, 6)).astype("int32")
    x[:2, 1] = x[:2, 0]  # repeated embedding rows: IndexedSlices with duplicate indices
    return x, y


@pytest.mark.parametrize("clipping", ["global", "per_variable"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_monitor_logs_the_pre_clipping_global_norm(clipping, jit_compile):
    x, y = _batch()
    model = RNNLanguageModel(VOCAB, cell="gru", num_layers=1, units=5, embedding_dim=4)
    model(x)
    compile_language_model(
        model,
        "sgd",
        learning_rate=0.5,
        clip_norm=0.05,
        clipping=clipping,
        jit_compile=jit_compile,
    )
    with tf.GradientTape() as tape:
        loss = model.loss(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    assert any(isinstance(g, tf.IndexedSlices) for g in grads)
    dense = [tf.convert_to_tensor(g) for g in grads]
    expected = float(tf.linalg.global_norm(dense))
    keras_view = float(tf.linalg.global_norm(grads))

    monitor = GradientNormMonitor()
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
    assert len(monitor.history["grad_norm"]) == 2
    assert monitor.history["grad_norm"][0] == pytest.approx(expected, rel=1e-5)
    assert monitor.history["keras_grad_norm"][0] == pytest.approx(keras_view, rel=1e-5)
    max_var = max(float(tf.linalg.global_norm([g])) for g in grads)
    assert monitor.history["max_variable_norm"][0] == pytest.approx(max_var, rel=1e-5)
    assert monitor.history["clipped"] == [1.0, 1.0]
    assert history.history["grad_norm_mean"][0] == pytest.approx(expected, rel=1e-5)
    # the second step's norm is that of the updated weights, not of the first step again
    assert monitor.history["grad_norm"][1] != monitor.history["grad_norm"][0]
    assert "apply_gradients" not in vars(model.optimizer)  # the wrapper is removed


def test_monitor_reports_no_clipping_below_threshold_after_an_earlier_fit():
    x, y = _batch()
    model = RNNLanguageModel(VOCAB, cell="simple_rnn", num_layers=1, units=4, embedding_dim=3)
    compile_language_model(model, "sgd", learning_rate=0.1, clip_norm=1e6, jit_compile=False)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # traced once without the monitor
    monitor = GradientNormMonitor()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[monitor])
    assert len(monitor.history["grad_norm"]) == 2
    assert all(n > 0 for n in monitor.history["grad_norm"])  # the wrapper was traced in
    assert monitor.history["clipped"] == [0.0, 0.0]


def test_monitor_writes_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    x, y = _batch()
    model = RNNLanguageModel(VOCAB, cell="simple_rnn", num_layers=1, units=4, embedding_dim=3)
    compile_language_model(model, "sgd", learning_rate=0.1, jit_compile=False)
    model.fit(
        x,
        y,
        batch_size=8,
        epochs=1,
        verbose=0,
        callbacks=[GradientNormMonitor(log_dir=str(tmp_path))],
    )
    assert any(tmp_path.iterdir())


def test_plots_run():
    model = RNNLanguageModel(VOCAB, cell="lstm", num_layers=1, units=4, embedding_dim=3)
    norms = gradient_norms_by_distance(model, _ids(2, 8))
    ax = plot_norms_by_distance([("lstm", norms)], key="c", bounds={"0.9^k": 0.9})
    assert ax.get_yscale() == "log"
    axes = plot_gradient_norm_trace({"a": [1.0, 2.0]}, clip_norm=1.0, losses={"a": [3.0, 2.0]})
    assert len(axes) == 2
