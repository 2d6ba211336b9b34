"""The fast path against the reference: cell backward rules, fused SGD, the dispatch, the
bfloat16 output matmuls of ``output_dtype="auto"``, and old ``.keras`` files."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm import fast
from keras_rnnlm.cells import GRUCell, LSTMCell, SimpleRNNCell
from keras_rnnlm.distribute import SGD, Adam
from keras_rnnlm.fast.cell_backward import backward_rule
from keras_rnnlm.fast.train_step import fast_path_supported, uses_fast_path
from keras_rnnlm.losses import MaskedLanguageModelLoss
from keras_rnnlm.metrics import Perplexity
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.training import compile_language_model

DATA = Path(__file__).with_name("data")
RNG = np.random.default_rng(0)


@pytest.mark.parametrize("cell_class", [SimpleRNNCell, LSTMCell])
def test_backward_rule_equals_autodiff_of_the_reference_step(cell_class):
    # forward half: exactly the cell's step; backward half: TensorFlow's gradient of it
    cell = cell_class(6)
    cell.build((None, 5))
    projected = tf.constant(RNG.normal(size=(4, 6 * cell.num_gates)), "float32")
    states = [tf.constant(RNG.normal(size=(4, 6)), "float32") for _ in cell.get_initial_state(4)]
    d_new = [tf.constant(RNG.normal(size=(4, 6)), "float32") for _ in states]
    step_with_residuals, step_backward = backward_rule(cell)
    with tf.GradientTape() as tape:
        tape.watch([projected, *states])
        _, expected = cell.step(projected, states)
        total = sum(tf.reduce_sum(s * d) for s, d in zip(expected, d_new))
    d_projected, *d_states = tape.gradient(total, [projected, *states])
    new_states, residuals = step_with_residuals(cell, projected, states, cell.recurrent_kernel)
    for ours, reference in zip(new_states, expected, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)
    d_z, d_prev = step_backward(cell, residuals, states, tf.transpose(cell.recurrent_kernel), d_new)
    np.testing.assert_allclose(d_z, d_projected, rtol=1e-5, atol=1e-6)
    for ours, reference in zip(d_prev, d_states, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


def test_subclassed_and_other_cells_have_no_backward_rule():
    class MyLSTM(LSTMCell):  # may change the step: the generic compiled loop instead
        pass

    assert backward_rule(MyLSTM(2)) is None and backward_rule(GRUCell(2)) is None


class ReferenceSGD(SGD):
    def fused_update_step(self, grads, trainable_variables, learning_rate):
        return False  # Keras's update after the exact clipping


@pytest.mark.parametrize("clip", [None, 0.05])
def test_fused_sgd_update_equals_the_reference_update(clip):
    x = RNG.integers(1, 20, size=(4, 6)).astype("int32")
    x[:, 3] = 5  # a repeated token: duplicate embedding rows in the sparse gradient
    weights = {}
    for name, cls in (("fused", SGD), ("reference", ReferenceSGD)):
        keras.utils.set_random_seed(2)
        model = RNNLanguageModel(20, units=4, embedding_dim=4, num_layers=1)
        model.compile(cls(learning_rate=1.0, global_clipnorm=clip), MaskedLanguageModelLoss())
        model.fit(x[:, :-1], x[:, 1:], epochs=3, verbose=0, shuffle=False)
        weights[name] = [w.numpy() for w in model.weights]
    for a, b in zip(weights["fused"], weights["reference"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


class ReferenceAdam(Adam):
    def fused_update_step(self, grads, trainable_variables, learning_rate):
        return False  # Keras's Adam.update_step after the exact clipping


@pytest.mark.parametrize(
    "clipping", [{}, {"global_clipnorm": 0.05}, {"clipnorm": 0.05}, {"clipvalue": 0.01}]
)
def test_fused_adam_update_equals_keras_adam(clipping):
    # TensorFlow's ApplyAdam kernel against Keras's nine-operation update, clipping included
    # (it runs inside the fused update). Stock keras.optimizers.Adam is no reference here: it
    # squares a sparse gradient's duplicate rows one by one (v differs for repeated tokens)
    x = RNG.integers(1, 20, size=(4, 6)).astype("int32")
    x[:, 3] = 5  # a repeated token: duplicate embedding rows in the sparse gradient
    weights = {}
    for name, cls in (("fused", Adam), ("reference", ReferenceAdam)):
        keras.utils.set_random_seed(2)
        # float32 output matmuls: bfloat16-rounded gradients would turn the two updates'
        # 1e-7 differences into whole bfloat16 steps that Adam's early steps magnify
        model = RNNLanguageModel(20, units=4, embedding_dim=4, num_layers=1, output_dtype="float32")
        optimizer = cls(learning_rate=0.05, **clipping)
        model.compile(optimizer, MaskedLanguageModelLoss())
        model.build((None, None))
        initial = [w.numpy() for w in model.weights]
        model.fit(x[:, :-1], x[:, 1:], epochs=3, verbose=0, shuffle=False)
        assert int(optimizer.iterations) == 3
        weights[name] = [w.numpy() for w in model.weights]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(weights["fused"], initial))
    assert moved > 1e-2  # the updates happened (Adam moves each weight by ~lr per step)
    for other in weights.values():  # float32 rounding of another operation order: 1e-6 seen
        for a, b in zip(weights["fused"], other, strict=True):
            np.testing.assert_allclose(a, b, atol=5e-6)


def test_fused_adam_update_equals_float64_adam():
    # the independent truth: Adam's formulas in float64 NumPy, four steps with gradients of
    # different scales (Keras's own float32 update is 2.3e-6 off it here, the fused 3e-7)
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(3, 3)).astype("float32") * s for s in (1, 0.01, 3, 0.5)]
    variable = keras.Variable(np.ones((3, 3), "float32"))
    optimizer = Adam(learning_rate=0.1)
    optimizer.build([variable])
    w, m, v = np.ones((3, 3)), np.zeros((3, 3)), np.zeros((3, 3))
    for t, g in enumerate(grads, start=1):
        optimizer.apply_gradients([(tf.constant(g), variable)])
        g = g.astype(np.float64)
        m += (g - m) * (1 - 0.9)
        v += (g * g - v) * (1 - 0.999)
        w -= 0.1 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(variable.numpy(), w, atol=1e-6)
    assert np.abs(w - 1).max() > 0.1


def test_fused_adam_update_is_refused_where_it_does_not_apply():
    from keras_rnnlm.fast.adam import fused_adam_update

    variable = keras.Variable(np.ones((2, 2), "float32"))
    optimizer = Adam(learning_rate=0.1, amsgrad=True)
    optimizer.build([variable])
    assert not fused_adam_update(optimizer, [tf.ones((2, 2))], [variable], 0.1)
    np.testing.assert_array_equal(variable.numpy(), np.ones((2, 2)))  # nothing applied
    optimizer = Adam(learning_rate=0.1)
    optimizer.build([variable])
    assert fused_adam_update(optimizer, [tf.ones((2, 2))], [variable], 0.1)
    np.testing.assert_allclose(variable.numpy(), np.full((2, 2), 0.9), atol=1e-6)  # lr*sign


def test_bf16_detection_follows_the_device():
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    flags = fast._cpu_flags()
    expected = has_gpu or bool(flags & {"avx512_bf16", "amx_bf16"})
    assert fast.bf16_matmul_is_fast() is expected


def test_implementation_is_validated_and_serialized():
    with pytest.raises(ValueError, match="implementation"):
        RNNLanguageModel(10, implementation="cudnn")
    with pytest.raises(ValueError, match="use_builtin_layers"):
        RNNLanguageModel(10, implementation="fast", use_builtin_layers=True)
    model = RNNLanguageModel(10, units=4, embedding_dim=4, implementation="reference")
    config = model.get_config()
    assert config["implementation"] == "reference" and config["output_dtype"] == "auto"
    assert [layer.implementation for layer in model.rnn.rnn_layers] == ["reference"] * 2
    clone = RNNLanguageModel.from_config(config)
    assert clone.get_config() == config


def _lm(**kwargs):
    model = RNNLanguageModel(30, units=8, embedding_dim=8, init_scale=0.1, **kwargs)
    model.build((None, None))
    return model


class _MyLoss(MaskedLanguageModelLoss):  # inherits supports_fused_output_layer
    pass


class _MyPerplexity(Perplexity):
    pass


def test_plain_compile_picks_the_fast_path_and_subclasses_keep_it():
    for loss, metric in ((MaskedLanguageModelLoss(), Perplexity()), (_MyLoss(), _MyPerplexity())):
        model = _lm()
        model.compile(keras.optimizers.SGD(1.0), loss=loss, metrics=[metric])
        assert model._fast_path and model._fused_metrics == [metric]
        assert all(layer.uses_fast_time_loop for layer in model.rnn.rnn_layers)
        assert model.jit_compile is False  # graph step, XLA time loops
        assert model.get_compile_config()["jit_compile"] == "auto"


def test_dispatch_falls_back_to_the_reference_path():
    model = _lm(implementation="reference")
    model.compile("sgd", MaskedLanguageModelLoss(), [Perplexity()])
    assert not model._fast_path and model._fused_metrics is None
    assert not any(layer.uses_fast_time_loop for layer in model.rnn.rnn_layers)
    model = _lm()
    model.compile("sgd", MaskedLanguageModelLoss(), jit_compile=True)  # asked for whole-step XLA
    assert not model._fast_path and model.jit_compile
    model.compile("sgd", MaskedLanguageModelLoss(), jit_compile=False)  # asked for no XLA
    assert not model._fast_path and not model.jit_compile
    assert not any(layer.uses_fast_time_loop for layer in model.rnn.rnn_layers)
    builtin = _lm(use_builtin_layers=True)
    assert not fast_path_supported(builtin) and not uses_fast_path(builtin)
    assert uses_fast_path(_lm(implementation="fast"), jit_compile=True)


class _ScaledLoss(MaskedLanguageModelLoss):
    supports_fused_output_layer = False  # changes the formula: the step must call it

    def __call__(self, y_true, y_pred, sample_weight=None):
        return 2.0 * super().__call__(y_true, y_pred, sample_weight)


def _fit_losses(model, loss, x, epochs=3):
    model.compile(keras.optimizers.SGD(0.5), loss=loss)
    history = model.fit(x[:, :-1], x[:, 1:], batch_size=4, epochs=epochs, verbose=0)
    return history.history["loss"]


@pytest.mark.parametrize(
    "make_loss",
    [lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True), lambda: _ScaledLoss()],
    ids=["stock_keras_loss", "opted_out_subclass"],
)
def test_losses_without_the_capability_train_like_the_reference(make_loss):
    # fast time loops with Keras's train step, against the reference path (whole-step XLA)
    x = RNG.integers(1, 30, size=(4, 9)).astype("int32")
    results = {}
    for implementation in ("auto", "reference"):
        keras.utils.set_random_seed(4)
        model = _lm(implementation=implementation, output_dtype="float32")
        results[implementation] = _fit_losses(model, make_loss(), x)
        assert model._fast_path == (implementation == "auto")
        assert model._fused_metrics is None
    np.testing.assert_allclose(results["auto"], results["reference"], rtol=1e-5)
    assert results["auto"][-1] < results["auto"][0]


def test_auto_output_dtype_is_bf16_only_in_the_fast_training_step(monkeypatch):
    monkeypatch.setattr(fast, "bf16_matmul_is_fast", lambda: True)
    import keras_rnnlm.models as models_module

    monkeypatch.setattr(models_module, "bf16_matmul_is_fast", lambda: True)
    model = _lm()
    assert model.output_matmul_dtype(training=True) == "float32"  # not compiled: reference
    compile_language_model(model, "sgd")
    assert model.output_matmul_dtype(training=True) == "bfloat16"
    assert model.output_matmul_dtype(training=False) == "float32"
    assert _lm(output_dtype="float32").output_matmul_dtype(training=True) == "float32"
    # the layers' input projections and weight gradients follow it (training calls only)
    assert {layer.training_matmul_dtype for layer in model.rnn.rnn_layers} == {"bfloat16"}
    for kwargs in (dict(output_dtype="float32"), dict(implementation="reference")):
        other = _lm(**kwargs)
        compile_language_model(other, "sgd")
        assert {layer.training_matmul_dtype for layer in other.rnn.rnn_layers} == {"float32"}


@pytest.mark.parametrize("name", ["recurrence_bf16", "default"])
def test_keras_files_saved_before_the_implementation_option_load(name):
    # written by the code of commit b65c9e6 (before `implementation` and output_dtype="auto"):
    # bfloat16 + jit_compile="recurrence", and float32 + whole-step XLA
    x = np.load(DATA / "main_b65c9e6_inputs.npy")
    loaded = keras.saving.load_model(DATA / f"main_b65c9e6_{name}.keras")
    assert loaded.get_config()["implementation"] == "auto"
    assert loaded.get_config()["output_dtype"] == ("bfloat16" if "bf16" in name else "float32")
    # the bfloat16 logits were written on a CPU that emulates bf16 matmuls; a CPU with
    # AVX512-BF16 accumulates the bf16 products in another order (seen: up to 7.6e-6 apart)
    np.testing.assert_allclose(
        np.asarray(loaded(x)),
        np.load(DATA / f"main_b65c9e6_{name}_logits.npy"),
        atol=5e-5 if "bf16" in name else 1e-6,
    )
    assert loaded._fast_path == (name == "recurrence_bf16")
    before = float(loaded.evaluate(x[:, :-1], x[:, 1:], verbose=0, return_dict=True)["loss"])
    loaded.fit(x[:, :-1], x[:, 1:], epochs=3, verbose=0)
    after = float(loaded.evaluate(x[:, :-1], x[:, 1:], verbose=0, return_dict=True)["loss"])
    assert after < before


def test_a_fast_path_model_gives_the_reference_logits_eagerly_and_inside_xla():
    # generation and the export trace a compiled model inside XLA functions
    model = _lm()
    x = np.array([[1, 2, 3, 0], [4, 5, 0, 0]], "int32")
    reference = np.asarray(model(x))
    compile_language_model(model, "sgd")
    assert model._fast_path
    np.testing.assert_allclose(np.asarray(model(x)), reference, atol=1e-6)
    in_xla = tf.function(lambda ids: model(ids), jit_compile=True)
    np.testing.assert_allclose(np.asarray(in_xla(x)), reference, atol=1e-6)


def test_fast_path_trains_on_batches_of_unknown_length_like_the_reference():
    # bucketed sentence batches: the time dimension is unknown when the step is traced
    batches = [RNG.integers(1, 30, size=(4, n)).astype("int32") for n in (5, 9)]
    spec = tf.TensorSpec((None, None), tf.int32)
    histories = {}
    for implementation in ("auto", "reference"):
        dataset = tf.data.Dataset.from_generator(
            lambda: ((b[:, :-1], b[:, 1:]) for b in batches), output_signature=(spec, spec)
        ).apply(tf.data.experimental.assert_cardinality(len(batches)))
        keras.utils.set_random_seed(6)
        model = _lm(implementation=implementation, output_dtype="float32")
        compile_language_model(model, "adam", 0.01)
        assert model._fast_path == (implementation == "auto")
        histories[implementation] = model.fit(dataset, epochs=3, verbose=0, shuffle=False).history
    for name in ("loss", "perplexity"):
        np.testing.assert_allclose(histories["auto"][name], histories["reference"][name], rtol=1e-5)


def test_embedding_lookup_gathers_from_the_variable_and_equals_the_keras_layer():
    from keras_rnnlm.fast.embedding import embedding_lookup

    embedding = keras.layers.Embedding(50, 8)
    embedding.build((None, None))
    ids = tf.constant(RNG.integers(0, 50, size=(3, 7)), "int32")
    upstream = tf.constant(RNG.normal(size=(3, 7, 8)), "float32")
    results = []
    for lookup in (embedding, lambda i: embedding_lookup(embedding, i)):
        with tf.GradientTape() as tape:
            vectors = lookup(ids)
            total = tf.reduce_sum(vectors * upstream)
        gradient = tape.gradient(total, embedding.embeddings)
        assert isinstance(gradient, tf.IndexedSlices)  # sparse, as the fused SGD expects
        results.append((vectors, tf.convert_to_tensor(gradient)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6, atol=1e-6)
    graph = tf.function(lambda i: embedding_lookup(embedding, i)).get_concrete_function(ids)
    ops_ = {op.type for op in graph.graph.get_operations()}
    assert "ResourceGather" in ops_ and "ReadVariableOp" not in ops_, ops_
    # a policy that casts keeps the Keras layer (bfloat16 vectors from float32 weights)
    mixed = keras.layers.Embedding(50, 8, dtype="mixed_bfloat16")
    mixed.build((None, None))
    assert embedding_lookup(mixed, ids).dtype == mixed(ids).dtype == tf.bfloat16


def test_fast_training_step_gathers_embeddings_and_computes_output_weight_gradients_last():
    from keras_rnnlm.fast import train_step as fast_dispatch

    model = RNNLanguageModel(60, embedding_dim=8, units=8, num_layers=1)
    compile_language_model(model, "sgd", 0.5, 0.25)
    x = RNG.integers(1, 60, size=(4, 5)).astype("int32")
    model.fit(x, x, batch_size=4, epochs=1, verbose=0)
    spec = tf.TensorSpec((4, 5), tf.int32)
    graph = tf.function(model.train_step).get_concrete_function((spec, spec)).graph
    names = {}
    for op in graph.get_operations():
        names.setdefault(op.type, []).append(op)
    assert "ResourceGather" in names
    # the output kernel's gradient product waits for every other gradient: run beside the
    # backward time loops it held an inter-op thread and serialized their row parts
    assert fast_dispatch.DEFER_OUTPUT_WEIGHT_GRADIENTS
    others = len(model.trainable_weights) - 2  # all but the output kernel and bias

    def waits(op, depth=3):  # op, or one of its close inputs, has the control inputs
        if len(op.control_inputs) >= others:
            return True
        return depth > 0 and any(waits(i.op, depth - 1) for i in op.inputs)

    products = [  # [hidden, 1]^T @ d_logits: (units + 1, vocabulary)
        op for op in names["MatMul"] if tuple(op.outputs[0].shape) == (9, 60)
    ]
    assert len(products) == 1 and waits(products[0]), "the weight gradients do not wait"
