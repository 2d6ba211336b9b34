"""Gradient diagnostics: finite differences, the c^k bound, the Jacobian spectrum, the monitor."""

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from log_capture import tensorflow_warnings  # noqa: E402

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
    assert norms["h_ratio"][0, -1] < norms["h_ratio"][0, 1]  # the bound is not vacuous: decay


def test_norms_by_distance_shapes_and_validation():
    model = RNNLanguageModel(VOCAB, cell="lstm", num_layers=2, units=4, embedding_dim=3)
    ids = _ids(3, 9)
    norms = gradient_norms_by_distance(model, ids, max_distance=5)
    assert norms["h"].shape == norms["c"].shape == (2, 6)
    assert norms["input"].shape == (6,)
    np.testing.assert_allclose(norms["c_ratio"], norms["c"] / norms["c"][:, :1])
    explicit = gradient_norms_by_distance(model, ids[:, :-1], targets=ids[:, -1], max_distance=5)
    np.testing.assert_allclose(explicit["h"], norms["h"])
    with pytest.raises(ValueError, match="padding"):
        gradient_norms_by_distance(model, np.zeros((1, 4), "int32"))
    with pytest.raises(ValueError, match=f"Token id {VOCAB} is outside the vocabulary"):
        gradient_norms_by_distance(model, np.full((1, 4), VOCAB, "int32"))
    with pytest.raises(ValueError, match="rank 2"):
        jacobian_spectrum(model, ids[0])
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
    kernel = np.asarray(lstm.rnn.rnn_layers[0].cell.recurrent_kernel, np.float64)
    blocks = [np.linalg.svd(kernel[:, g * 5 : (g + 1) * 5], compute_uv=False)[0] for g in range(4)]
    np.testing.assert_allclose(spectrum["recurrent_kernel_gate_max_singular"], blocks, rtol=1e-6)


def test_jacobian_spectrum_equals_numpy_and_traces_one_graph_per_call_without_a_warning():
    with tensorflow_warnings() as messages:
        for seed in range(6):  # the notebook's pattern: fresh models, one spectrum each
            keras.utils.set_random_seed(seed)
            model = RNNLanguageModel(VOCAB, cell="simple_rnn", num_layers=1, units=5)
            ids = _ids(2, 6, seed)
            spectrum = jacobian_spectrum(model, ids)
    assert not [m for m in messages if "retracing" in m], messages
    # numpy: h_t = tanh(x_t W + h_(t-1) U + b), dh_t/dh_(t-1) = diag(1 - h_t^2) U^T
    cell = model.rnn.rnn_layers[0].cell
    kernel, recurrent, bias = (
        np.asarray(w, np.float64) for w in (cell.kernel, cell.recurrent_kernel, cell.bias)
    )
    x = np.asarray(model.embedding(ids), np.float64)
    h, expected = np.zeros((2, 5)), []
    for t in range(ids.shape[1]):
        h = np.tanh(x[:, t] @ kernel + h @ recurrent + bias)
        jac = (1 - h**2)[:, :, None] * recurrent.T[None]  # (batch, 5, 5)
        expected.append(np.linalg.svd(jac, compute_uv=False)[:, 0])
    np.testing.assert_allclose(spectrum["step_max_singular"], np.stack(expected, 1), rtol=1e-4)


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
    # the library's optimizers clip each variable's gradient with repeated rows summed
    max_var = max(float(tf.linalg.global_norm([g])) for g in dense)
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
    from keras_rnnlm.summaries import read_scalars

    x, y = _batch()
    model = RNNLanguageModel(VOCAB, cell="simple_rnn", num_layers=1, units=4, embedding_dim=3)
    compile_language_model(model, "sgd", learning_rate=0.1, jit_compile=False)
    monitor = GradientNormMonitor(log_dir=str(tmp_path))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[monitor])
    written = {
        tag: [(step, value) for step, value, _ in events]
        for tag, events in read_scalars(tmp_path).items()
    }
    assert set(written) == {f"gradients/{key}" for key in GradientNormMonitor.KEYS}
    norms = sorted(written["gradients/grad_norm"])
    assert [step for step, _ in norms] == [1, 2]  # optimizer iterations after each update
    np.testing.assert_allclose([v for _, v in norms], monitor.history["grad_norm"], rtol=1e-6)


def test_plots_draw_the_values_they_are_given():
    model = RNNLanguageModel(VOCAB, cell="lstm", num_layers=1, units=4, embedding_dim=3)
    norms = gradient_norms_by_distance(model, _ids(2, 8))
    ax = plot_norms_by_distance([("lstm", norms)], key="c", bounds={"0.9^k": 0.9})
    assert ax.get_yscale() == "log"
    curve, bound = ax.get_lines()
    np.testing.assert_allclose(curve.get_xdata(), norms["distance"])
    np.testing.assert_allclose(curve.get_ydata(), norms["c_ratio"][-1])
    np.testing.assert_allclose(bound.get_ydata(), 0.9 ** norms["distance"])
    raw = plot_norms_by_distance(norms, key="input", ratio=False)
    np.testing.assert_allclose(raw.get_lines()[-1].get_ydata(), norms["input"])
    axes = plot_gradient_norm_trace({"a": [1.0, 2.0]}, clip_norm=1.5, losses={"a": [3.0, 2.0]})
    assert len(axes) == 2
    trace, threshold = axes[0].get_lines()
    np.testing.assert_allclose(trace.get_ydata(), [1.0, 2.0])
    np.testing.assert_allclose(threshold.get_ydata(), [1.5, 1.5])
    np.testing.assert_allclose(axes[1].get_lines()[0].get_ydata(), [3.0, 2.0])


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _output_gradient(model, h_last, targets):
    """dJ/dh at the last position, by hand: (softmax(h W + b) - onehot) W^T."""
    kernel, bias = (np.asarray(w, np.float64) for w in model.output_layer.get_weights())
    logits = h_last @ kernel + bias
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    p[np.arange(len(targets)), targets] -= 1.0
    return p @ kernel.T


def _mean_norm(g):
    return np.mean(np.linalg.norm(g, axis=-1))


def _one_layer_case(cell, units, embedding_dim, batch, length, seed):
    """A float64 one-layer model with doubled weights, its measured norms, and the numpy
    inputs of a hand computation: (model, norms, embedded inputs, targets, cell weights)."""
    with floatx("float64"):
        model = RNNLanguageModel(
            VOCAB, cell=cell, num_layers=1, units=units, embedding_dim=embedding_dim
        )
        ids = _ids(batch, length, seed=seed)
        model(ids)
        model.set_weights([w * 2.0 for w in model.get_weights()])
        norms = gradient_norms_by_distance(model, ids)
    x = np.asarray(model.embedding.embeddings, np.float64)[ids[:, :-1]]
    weights = [np.asarray(w, np.float64) for w in model.rnn.rnn_layers[0].cell.get_weights()]
    return model, norms, x, ids[:, -1], weights


def test_simple_rnn_norms_match_hand_written_backpropagation_through_time():
    # independent of the module: numpy forward pass, then the chain rule written out,
    # dJ/dh_{s-1} = (dJ/dh_s * (1 - h_s^2)) W_h^T and dJ/dx_s = (dJ/dh_s * (1 - h_s^2)) W_x^T
    model, norms, x, targets, (w_x, w_h, b) = _one_layer_case("simple_rnn", 4, 3, 3, 7, seed=5)
    hs, h = [], np.zeros((3, 4))
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ w_x + h @ w_h + b)
        hs.append(h)
    g = _output_gradient(model, hs[-1], targets)
    expected_h, expected_x = [], []
    for t in reversed(range(x.shape[1])):
        expected_h.append(_mean_norm(g))
        d_a = g * (1.0 - hs[t] ** 2)
        expected_x.append(_mean_norm(d_a @ w_x.T))
        g = d_a @ w_h.T
    np.testing.assert_allclose(norms["h"][0], expected_h, rtol=1e-9)
    np.testing.assert_allclose(norms["input"], expected_x, rtol=1e-9)
    np.testing.assert_allclose(norms["h_ratio"][0], np.array(expected_h) / expected_h[0])


def test_lstm_cell_state_norms_match_hand_written_backpropagation_through_time():
    # the total derivative dJ/dc_s goes through h_s = o_s tanh(c_s) and through c_{s+1}
    model, norms, x, targets, (w_x, w_h, b) = _one_layer_case("lstm", 3, 2, 2, 6, seed=6)
    h, c = np.zeros((2, 3)), np.zeros((2, 3))
    steps = []  # (c_prev, i, f, g, o, c)
    for t in range(x.shape[1]):
        z_i, z_f, z_c, z_o = np.split(x[:, t] @ w_x + h @ w_h + b, 4, axis=-1)
        i, f, g, o = _sigmoid(z_i), _sigmoid(z_f), np.tanh(z_c), _sigmoid(z_o)
        steps.append((c, i, f, g, o, f * c + i * g))
        c = steps[-1][-1]
        h = o * np.tanh(c)
    d_h = _output_gradient(model, h, targets)
    d_c_next = np.zeros_like(d_h)  # dJ/dc_{s+1} * f_{s+1}: the path through the next cell
    expected_h, expected_c = [], []
    for c_prev, i, f, g, o, c in reversed(steps):
        d_c = d_c_next + d_h * o * (1.0 - np.tanh(c) ** 2)
        expected_h.append(_mean_norm(d_h))
        expected_c.append(_mean_norm(d_c))
        d_z = np.concatenate(
            [d_c * g * i * (1 - i), d_c * c_prev * f * (1 - f), d_c * i * (1 - g**2),
             d_h * np.tanh(c) * o * (1 - o)], axis=-1)  # fmt: skip
        d_h, d_c_next = d_z @ w_h.T, d_c * f
    np.testing.assert_allclose(norms["h"][0], expected_h, rtol=1e-9)
    np.testing.assert_allclose(norms["c"][0], expected_c, rtol=1e-9)


@pytest.mark.parametrize("builtin", [False, True])
def test_perturbed_lstm_step_is_the_cells_own_step(builtin):
    from keras_rnnlm.gradients import _lstm_step

    cell = keras.layers.LSTMCell(3) if builtin else RNNLanguageModel(
        VOCAB, cell="lstm", num_layers=1, units=3, embedding_dim=2
    ).rnn.rnn_layers[0].cell  # fmt: skip
    rng = np.random.default_rng(7)
    x = tf.constant(rng.standard_normal((2, 2)), "float32")
    states = [tf.constant(rng.standard_normal((2, 3)), "float32") for _ in range(2)]
    cell.build((None, 2))
    cell.bias.assign(rng.standard_normal(cell.bias.shape))
    expected = cell.call(x, states)[1]
    perturbed = _lstm_step(cell, x, states, delta_c=tf.zeros((2, 3)))
    for ours, theirs in zip(perturbed, expected, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)


def test_monitor_clipped_flag_uses_the_norm_the_optimizer_clips():
    # every input is the same token: the embedding gradient is one row repeated 24 times,
    # and the norm of its summed rows differs from Keras's norm of the rows as they come
    x = np.full((4, 6), 5, "int32")
    y = _ids(4, 6, seed=8)
    model = RNNLanguageModel(VOCAB, cell="simple_rnn", num_layers=1, units=4, embedding_dim=3)
    model(x)
    compile_language_model(model, "sgd", jit_compile=False)  # model.loss: the library's loss
    with tf.GradientTape() as tape:
        loss = model.loss(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_weights)
    exact = float(tf.linalg.global_norm([tf.convert_to_tensor(g) for g in grads]))
    keras_view = float(tf.linalg.global_norm(grads))
    assert abs(exact - keras_view) > 0.05 * min(exact, keras_view)  # the norms differ...
    clip_norm = (exact + keras_view) / 2  # ...and straddle the threshold
    learning_rate = 0.1
    compile_language_model(
        model, "sgd", learning_rate=learning_rate, clip_norm=clip_norm, jit_compile=False
    )
    before = [np.asarray(w) for w in model.trainable_weights]
    monitor = GradientNormMonitor()
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[monitor])
    assert monitor.history["grad_norm"][0] == pytest.approx(exact, rel=1e-5)
    assert monitor.history["keras_grad_norm"][0] == pytest.approx(keras_view, rel=1e-5)
    # independent truth: the update the optimizer applied, ||w1 - w0|| = lr * scale * ||g||
    step = np.sqrt(sum(np.sum((np.asarray(w) - w0) ** 2)
                       for w, w0 in zip(model.trainable_weights, before)))  # fmt: skip
    scale = step / (learning_rate * exact)
    assert scale == pytest.approx(min(1.0, clip_norm / exact), rel=1e-4)
    assert monitor.history["clipped"] == [float(scale < 1.0 - 1e-4)]
    assert monitor.history["clipped"] == [float(exact > clip_norm)]


def test_monitor_does_not_change_the_training_it_watches():
    # the monitor's records run before the update (a control dependency): without it, its
    # reads ran beside the clipped update and changed the trained weights, differently from
    # run to run (measured: a 1x128 SimpleRNN on python_docs at SGD lr 2, global clip 1,
    # diverged from the unmonitored run after ~60 steps; final batch loss 6.07 or 6.39
    # against 8.41)
    from keras_rnnlm.data import Vocabulary, encode_corpus, python_docs_corpus
    from keras_rnnlm.data.pipelines import stream_batches, token_stream

    corpus = python_docs_corpus()
    vocabulary = Vocabulary.build(corpus.train, lowercase=True, min_count=2)
    ids = encode_corpus(vocabulary, corpus.train)
    inputs, targets = stream_batches(token_stream(ids), 16, 35)
    data = tf.data.Dataset.from_tensor_slices((inputs[:80], targets[:80]))
    losses = {}
    for monitored in (False, True, True):
        keras.utils.set_random_seed(0)
        model = RNNLanguageModel(vocabulary.size, cell="simple_rnn", units=128, embedding_dim=64)
        compile_language_model(model, "sgd", 2.0, 1.0, jit_compile=False)
        monitor = GradientNormMonitor()
        history = []
        record = keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs, seen=history: seen.append(float(logs["loss"]))
        )
        callbacks = [monitor, record] if monitored else [record]
        model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
        losses.setdefault(monitored, []).append(history)
        if monitored:
            assert len(monitor.history["grad_norm"]) == 80
            assert 0.0 < np.mean(monitor.history["clipped"]) < 1.0  # the clip fires sometimes
    (plain,), (watched, again) = losses[False], losses[True]
    assert watched == plain and again == plain
