"""Optimizers and clipping, schedules, stateful (TBPTT) training, exact evaluation, presets."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm.data.pipelines import stream_dataset, token_stream
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.runs import TrainConfig, stateless_copy
from keras_rnnlm.training import (
    PRESETS,
    EpochDecay,
    ResetStatesCallback,
    compile_language_model,
    evaluate_perplexity,
    evaluate_stream_perplexity,
    make_optimizer,
)

RNG = np.random.default_rng(0)


def _apply(optimizer, grads):
    variables = [keras.Variable(np.zeros_like(g)) for g in grads]
    optimizer.apply_gradients(zip([tf.constant(g) for g in grads], variables))
    return [-np.asarray(v) for v in variables]  # SGD lr 1: the applied (clipped) gradient


def test_global_clipping_rescales_all_gradients_together():
    grads = [
        np.array([3.0, 0.0], np.float32),
        np.array([0.0, 4.0, 0.0], np.float32),
    ]  # global norm 5
    applied = _apply(make_optimizer("sgd", 1.0, clip_norm=1.0, clipping="global"), grads)
    np.testing.assert_allclose(applied[0], [0.6, 0.0], atol=1e-6)
    np.testing.assert_allclose(applied[1], [0.0, 0.8, 0.0], atol=1e-6)
    per_variable = _apply(make_optimizer("sgd", 1.0, clip_norm=1.0, clipping="per_variable"), grads)
    np.testing.assert_allclose(per_variable[0], [1.0, 0.0], atol=1e-6)  # direction changed
    np.testing.assert_allclose(per_variable[1], [0.0, 1.0, 0.0], atol=1e-6)
    unclipped = _apply(make_optimizer("sgd", 1.0, clip_norm=1.0, clipping="none"), grads)
    np.testing.assert_allclose(unclipped[1], grads[1])


def test_optimizer_argument_errors():
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("rmsprop")
    with pytest.raises(ValueError, match="clip_norm"):
        make_optimizer("sgd", 1.0, clip_norm=-1.0)


def test_epoch_decay_is_zaremba_schedule():
    schedule = EpochDecay(1.0, decay_start_epoch=4, decay_factor=2.0)
    assert [schedule(e) for e in range(7)] == [1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125]


def test_presets_match_the_paper():
    # Zaremba, Sutskever & Vinyals (2014), section 4.1
    table = {
        #          layers units steps batch init  dropout lr  max_epoch decay clip epochs valid test
        "small": (2, 200, 20, 20, 0.1, 0.0, 1.0, 4, 2.0, 5.0, 13, 120.7, 114.5),
        "medium": (2, 650, 35, 20, 0.05, 0.5, 1.0, 6, 1.2, 5.0, 39, 86.2, 82.7),
        "large": (2, 1500, 35, 20, 0.04, 0.65, 1.0, 14, 1.15, 10.0, 55, 82.2, 78.4),
    }
    for name, row in table.items():
        p = PRESETS[name]
        got = (p.num_layers, p.units, p.num_steps, p.batch_size, p.init_scale, p.dropout, p.learning_rate,
               p.decay_start_epoch, p.decay_factor, p.clip_norm, p.epochs, p.paper_valid_perplexity,
               p.paper_test_perplexity)  # fmt: skip
        assert got == row, name
        # Keras minimises the mean over the num_steps steps: same update, same clipping
        assert p.keras_learning_rate == pytest.approx(p.learning_rate * p.num_steps)
        assert p.keras_clip_norm == pytest.approx(p.clip_norm / p.num_steps)
        config = TrainConfig.from_preset(name)
        assert (config.mode, config.optimizer, config.clipping, config.units) == (
            "stream",
            "sgd",
            "global",
            p.units,
        )
        # like every run: the fastest correct implementation for the device (keras_rnnlm.fast)
        assert (config.jit_compile, config.output_dtype) == ("auto", "auto")
        assert TrainConfig.from_preset(name, jit_compile=True).jit_compile is True


def _stateful(batch=2):
    model = RNNLanguageModel(20, units=8, embedding_dim=8, stateful=True)
    model.build((batch, None))
    return model


def test_stateful_model_carries_state_and_resets():
    model = _stateful()
    a, b = RNG.integers(1, 20, size=(2, 5)), RNG.integers(1, 20, size=(2, 5))
    fresh_b = np.asarray(model(b))
    model.reset_states()
    model(a)
    carried_b = np.asarray(model(b))
    assert not np.allclose(carried_b, fresh_b)  # state from `a` changes the predictions on `b`
    # carrying equals reading a and b as one sequence
    model.reset_states()
    whole = np.asarray(stateless_copy(model)(np.concatenate([a, b], axis=1)))
    np.testing.assert_allclose(carried_b, whole[:, 5:], atol=1e-5)
    model.reset_states()
    np.testing.assert_allclose(np.asarray(model(b)), fresh_b, atol=1e-6)


def test_carrying_state_changes_the_training_loss_and_resets_each_epoch():
    stream = RNG.integers(4, 20, size=2000)
    sentences = [list(stream[i : i + 10]) for i in range(0, 2000, 10)]
    data = stream_dataset(sentences, batch_size=2, num_steps=5)

    seen = []

    class RecordState(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(
                float(np.abs(np.asarray(self.model.rnn.rnn_layers[0].state_variables[0])).sum())
            )

    model = _stateful()
    compile_language_model(model, "sgd", 0.0, None, jit_compile=False)  # lr 0: weights frozen
    carried = model.evaluate(data, verbose=0, return_dict=True)["perplexity"]
    model.fit(
        data, epochs=2, verbose=0, shuffle=False, callbacks=[ResetStatesCallback(), RecordState()]
    )
    assert seen == [0.0, 0.0]  # zero state at the start of every epoch

    # the same frozen weights without carrying state (state zero at every window)
    stateless = stateless_copy(model)
    compile_language_model(stateless, "sgd", 0.0, None, jit_compile=False)
    not_carried = stateless.evaluate(data, verbose=0, return_dict=True)["perplexity"]
    assert abs(carried - not_carried) > 1e-4


def test_stream_evaluation_equals_one_forward_pass():
    model = RNNLanguageModel(20, units=8, embedding_dim=8)
    sentences = [list(RNG.integers(4, 20, size=n)) for n in (5, 9, 3, 12)]
    stream = token_stream(sentences)
    windowed = evaluate_stream_perplexity(model, stream, window=7)
    x, y = stream[None, :-1], stream[None, 1:]
    single = evaluate_perplexity(model, tf.data.Dataset.from_tensors((x, y)))
    assert windowed["tokens"] == len(stream) - 1 == single["tokens"]
    assert windowed["perplexity"] == pytest.approx(single["perplexity"], rel=1e-5)


def _loss_and_gradients(model, jit_compile, x, y):
    compile_language_model(model, "sgd", 1.0, None, jit_compile=jit_compile)

    @tf.function(jit_compile=jit_compile is True)
    def run(x, y):
        with tf.GradientTape() as tape:
            loss = model.loss(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        return loss, [tf.convert_to_tensor(g) for g in grads]

    loss, grads = run(x, y)
    return float(loss), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrence_only_xla_matches_whole_step_xla(cell):
    # float32 output matmuls: the comparison is of the two compilations, and "auto" would pick
    # bfloat16 on a CPU with AVX512-BF16, whose rounding differs between them
    model = RNNLanguageModel(
        40, cell=cell, units=8, embedding_dim=8, init_scale=0.1, output_dtype="float32"
    )
    model.build((None, None))
    x = RNG.integers(0, 40, size=(3, 6)).astype("int32")  # some padding (id 0) in inputs
    y = RNG.integers(0, 40, size=(3, 6)).astype("int32")
    loss, grads = _loss_and_gradients(model, True, x, y)
    hybrid_loss, hybrid_grads = _loss_and_gradients(model, "recurrence", x, y)
    assert all(layer.jit_time_loop for layer in model.rnn.rnn_layers)
    assert not model.jit_compile  # the step itself runs as a graph
    np.testing.assert_allclose(hybrid_loss, loss, rtol=1e-5)
    for g, h in zip(grads, hybrid_grads, strict=True):
        np.testing.assert_allclose(h, g, rtol=1e-4, atol=1e-6)
    compile_language_model(model, "sgd", jit_compile=True)  # switches the XLA time loops off
    assert not any(layer.jit_time_loop for layer in model.rnn.rnn_layers)


def test_hybrid_bfloat16_training_fits_like_float32_and_reloads(tmp_path):
    x = RNG.integers(1, 30, size=(4, 21)).astype("int32")
    losses = {}
    for dtype, jit in (("float32", True), ("bfloat16", "recurrence")):
        keras.utils.set_random_seed(3)
        model = RNNLanguageModel(30, units=8, embedding_dim=8, init_scale=0.1, output_dtype=dtype)
        compile_language_model(model, "sgd", 1.0, 1.0, jit_compile=jit)
        history = model.fit(x[:, :-1], x[:, 1:], batch_size=4, epochs=5, verbose=0)
        losses[dtype] = history.history["loss"]
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=1e-2)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.compiled and all(layer.jit_time_loop for layer in loaded.rnn.rnn_layers)
    resumed = loaded.fit(x[:, :-1], x[:, 1:], batch_size=4, epochs=1, verbose=0)
    assert resumed.history["loss"][0] < losses["bfloat16"][-1]  # continues where it stopped


def test_recurrence_jit_needs_an_rnn_language_model():
    with pytest.raises(ValueError, match="recurrence"):
        compile_language_model(keras.Sequential([keras.layers.Dense(2)]), jit_compile="recurrence")


@pytest.mark.parametrize("output_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tie", [False, True], ids=["dense", "tied"])
def test_fused_train_step_trains_exactly_like_keras_train_step(output_dtype, tie):
    # the hybrid mode's fused output-layer + loss step against Keras's own train_step (plain
    # graph mode) from the same weights: per-epoch loss and perplexity logs and final weights
    x = RNG.integers(1, 40, size=(4, 8)).astype("int32")
    y = RNG.integers(0, 40, size=(4, 8)).astype("int32")
    x[1, 5:], y[1, 4:] = 0, 0  # a padded row
    runs = {}
    for implementation in ("fast", "reference"):
        keras.utils.set_random_seed(3)
        model = RNNLanguageModel(
            40,
            units=8,
            embedding_dim=8,
            output_dtype=output_dtype,
            tie_embeddings=tie,
            implementation=implementation,
        )
        model.build((None, None))
        compile_language_model(model, "sgd", learning_rate=1.0, clip_norm=0.5, jit_compile=False)
        assert (model._fused_metrics is not None) == (implementation == "fast")
        for layer in model.rnn.rnn_layers:  # the output step only: float32 input projections
            layer.training_matmul_dtype = "float32"  # (bf16 ones: test_bfloat16_projections_*)
        history = model.fit(x, y, batch_size=4, epochs=3, verbose=0, shuffle=False)
        runs[implementation] = history.history, [w.numpy() for w in model.weights]
    (fused_logs, fused_weights), (keras_logs, keras_weights) = runs["fast"], runs["reference"]
    assert set(fused_logs) == set(keras_logs) == {"loss", "perplexity"}
    # bf16: one rounding of the logits gradient may fall differently (the products' order)
    rtol, atol = (1e-5, 1e-6) if output_dtype == "float32" else (1e-3, 1e-4)
    for name in keras_logs:
        np.testing.assert_allclose(fused_logs[name], keras_logs[name], rtol=rtol)
    for a, b in zip(fused_weights, keras_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=atol)


def test_fused_train_step_falls_back_for_other_metrics_and_sample_weights():
    # the fast path without the fused step (a metric that needs the logits; sample weights)
    # trains exactly like the reference path
    from keras_rnnlm.losses import MaskedLanguageModelLoss
    from keras_rnnlm.metrics import MaskedAccuracy

    x = RNG.integers(1, 20, size=(4, 6)).astype("int32")
    weights = np.array([1.0, 0.5, 2.0, 0.0], "float32")
    runs = {}
    for implementation in ("auto", "reference"):
        keras.utils.set_random_seed(5)
        model = RNNLanguageModel(
            20, units=4, embedding_dim=4, implementation=implementation, output_dtype="float32"
        )
        model.compile(
            "sgd",
            MaskedLanguageModelLoss(jit_compile=True),
            [MaskedAccuracy()],
            jit_compile="recurrence",
        )
        assert model._fused_metrics is None  # a metric that needs the logits: Keras's step
        assert model._fast_path == (implementation == "auto")
        other_metric = model.fit(x, x, epochs=2, verbose=0, shuffle=False).history
        compile_language_model(model, "sgd", jit_compile="recurrence")
        assert (model._fused_metrics is not None) == (implementation == "auto")
        weighted = model.fit(x, x, sample_weight=weights, epochs=2, verbose=0, shuffle=False)
        runs[implementation] = other_metric, weighted.history
    for fast_logs, reference_logs in zip(runs["auto"], runs["reference"], strict=True):
        assert set(fast_logs) == set(reference_logs)
        for name in reference_logs:
            np.testing.assert_allclose(fast_logs[name], reference_logs[name], rtol=1e-5)
    assert "masked_accuracy" in runs["auto"][0]


def test_trim_trailing_padding_keeps_every_column_with_a_real_token():
    from keras_rnnlm.fast.train_step import trim_trailing_padding

    x = np.zeros((3, 20), "int32")
    y = np.zeros((3, 20), "int32")
    x[0, :4], y[0, :4] = 5, 6
    y[2, 10] = 7  # a real target beyond every real input: its column stays
    x[1, 0] = 9  # a middle column of padding (1..9) is not trailing: kept
    for multiple, length in ((1, 11), (8, 16), (32, 20)):
        tx, ty = trim_trailing_padding(tf.constant(x), tf.constant(y), multiple)
        assert tx.shape == ty.shape == (3, length)
        np.testing.assert_array_equal(tx, x[:, :length])
        np.testing.assert_array_equal(ty, y[:, :length])
    empty = tf.zeros((2, 5), tf.int32)  # nothing real: one step kept
    assert trim_trailing_padding(empty, empty)[0].shape == (2, 1)


def test_real_target_positions_puts_real_rows_first_and_rounds_up():
    from keras_rnnlm.fast.train_step import real_target_positions

    targets = tf.constant([0, 4, 0, 0, 7, 9, 0, 0, 0, 0], tf.int32)
    hidden = tf.reshape(tf.range(20, dtype=tf.float32), (10, 2))
    for multiple, expected in ((1, [1, 4, 5]), (4, [1, 4, 5, 0]), (8, [1, 4, 5, 0, 2, 3, 6, 7])):
        rows, kept = real_target_positions(hidden, targets, multiple)
        np.testing.assert_array_equal(kept, tf.gather(targets, expected))
        np.testing.assert_array_equal(rows, tf.gather(hidden, expected))
    assert real_target_positions(hidden, targets, 16)[1].shape == (10,)  # at most all rows
    assert real_target_positions(hidden, tf.zeros(10, tf.int32), 4)[1].shape == (4,)
    with tf.GradientTape() as tape:  # each kept row's gradient goes back to its position
        tape.watch(hidden)
        rows, _ = real_target_positions(hidden, targets, 4)
        total = tf.reduce_sum(rows * tf.constant([[1.0], [2.0], [3.0], [4.0]]))
    expected = np.zeros((10, 2), "float32")
    expected[[1, 4, 5, 0]] = [[1.0], [2.0], [3.0], [4.0]]
    np.testing.assert_array_equal(tf.convert_to_tensor(tape.gradient(total, hidden)), expected)


@pytest.mark.parametrize("output_dtype", ["float32", "bfloat16"])
def test_fused_step_skips_trailing_padding_and_trains_like_keras(output_dtype, monkeypatch):
    # sentence batches 24 wide whose longest row has 6 tokens: the fast step's time loops run
    # 8 steps and its output layer 16 rows (15 real targets; asserted inside the traced
    # step), and training equals Keras's train_step on the full width
    import keras_rnnlm.recurrent as recurrent
    from keras_rnnlm.fast import train_step

    x = np.zeros((4, 24), "int32")
    y = np.zeros((4, 24), "int32")
    for row, length in enumerate((6, 3, 5, 1)):
        x[row, :length] = RNG.integers(1, 40, size=length)
        y[row, :length] = RNG.integers(1, 40, size=length)
    loop = recurrent.fast_time_loop

    def checked_loop(layer, projected, *args, **kwargs):
        steps = tf.shape(projected)[1]
        with tf.control_dependencies([tf.debugging.assert_equal(steps, 8)]):
            projected = tf.identity(projected)
        return loop(layer, projected, *args, **kwargs)

    output_layer = train_step.output_layer_cross_entropy

    def checked_output_layer(hidden, *args, **kwargs):
        with tf.control_dependencies([tf.debugging.assert_equal(tf.shape(hidden)[0], 16)]):
            hidden = tf.identity(hidden)
        return output_layer(hidden, *args, **kwargs)

    monkeypatch.setattr(recurrent, "fast_time_loop", checked_loop)
    monkeypatch.setattr(train_step, "output_layer_cross_entropy", checked_output_layer)
    monkeypatch.setattr(train_step, "POSITION_MULTIPLE", 4)
    runs = {}
    for implementation in ("fast", "reference"):
        keras.utils.set_random_seed(4)
        model = RNNLanguageModel(
            40, units=8, embedding_dim=8, output_dtype=output_dtype, implementation=implementation
        )
        model.build((None, None))
        compile_language_model(model, "sgd", learning_rate=1.0, clip_norm=0.5)
        history = model.fit(x, y, batch_size=4, epochs=3, verbose=0, shuffle=False)
        runs[implementation] = history.history, [w.numpy() for w in model.weights]
    (fast_logs, fast_weights), (keras_logs, keras_weights) = runs["fast"], runs["reference"]
    # bf16: the output and projection products' operand rounding (as the fused-step test)
    rtol, atol = (1e-5, 1e-6) if output_dtype == "float32" else (1e-3, 1e-3)
    for name in keras_logs:
        np.testing.assert_allclose(fast_logs[name], keras_logs[name], rtol=rtol)
    for a, b in zip(fast_weights, keras_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=atol)


@pytest.mark.parametrize("stateful", [True, False], ids=["stream", "sentences"])
def test_steps_per_execution_trains_exactly_like_one_step_per_call(stateful):
    # the fast path inside Keras's multi-step loop: the same updates in the same order (a
    # stateful stream's carried states too; sentence batches of three widths, and a leftover
    # call of one step), so weights and logs equal one step per call exactly. (A dataset of
    # unknown cardinality is given one: otherwise Keras's one-step loop counts an extra
    # optimizer iteration per epoch, at the end-of-data call, which moves Adam's bias
    # correction, reference path as fast path; its multi-step loop does not.)
    from keras_rnnlm.fast import train_step

    rows = 2 if stateful else 3
    if stateful:
        x = RNG.integers(1, 30, size=(14, 5)).astype("int32")
        y = RNG.integers(1, 30, size=(14, 5)).astype("int32")
        data = dict(x=x, y=y, batch_size=rows)
    else:
        batches = []
        for width in (4, 9, 6, 9, 4, 6, 9):
            x = RNG.integers(1, 30, size=(rows, width)).astype("int32")
            y = RNG.integers(1, 30, size=(rows, width)).astype("int32")
            x[0, width // 2 :], y[0, width // 2 :] = 0, 0  # padding
            batches.append((x, y))
        dataset = tf.data.Dataset.from_generator(
            lambda: iter(batches), output_signature=(tf.TensorSpec((None, None), tf.int32),) * 2
        )
        data = dict(x=dataset.apply(tf.data.experimental.assert_cardinality(len(batches))))
    runs = {}
    for steps in (1, 3):
        keras.utils.set_random_seed(5)
        model = RNNLanguageModel(30, units=8, embedding_dim=8, stateful=stateful)
        model.build((rows if stateful else None, None))
        optimizer = "sgd" if stateful else "adam"  # the presets' and the README's
        compile_language_model(model, optimizer, 0.01, 1.0, steps_per_execution=steps)
        assert train_step.uses_fast_path(model) and model.steps_per_execution == steps
        history = model.fit(**data, epochs=2, verbose=0, shuffle=False)
        assert int(model.optimizer.iterations.numpy()) == 14  # 7 batches, 2 epochs
        runs[steps] = history.history, [w.numpy() for w in model.weights]
    (one_logs, one_weights), (three_logs, three_weights) = runs[1], runs[3]
    assert one_logs == three_logs
    for a, b in zip(one_weights, three_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    for bad, error in ((0, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="steps_per_execution"):
            compile_language_model(model, steps_per_execution=bad)
