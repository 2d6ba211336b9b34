"""Bidirectional and stacked layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm.cells import GRUCell, LSTMCell, SimpleRNNCell
from keras_rnnlm.fast import time_loop
from keras_rnnlm.fast.cell_backward import backward_rule
from keras_rnnlm.layers import Bidirectional, Recurrent, StackedRecurrent, reverse_padded

LENGTHS = [6, 4, 1]
X = np.random.default_rng(0).normal(size=(3, 6, 5)).astype("float32")
MASK = np.arange(6)[None, :] < np.array(LENGTHS)[:, None]
X[~MASK] = 7.0  # loud padding: any leak shows


@pytest.mark.parametrize("cell", [LSTMCell, GRUCell])
def test_bidirectional_masking_equals_each_sequence_alone(cell):
    bi = Bidirectional(Recurrent(cell(4), return_sequences=True))
    padded = np.asarray(bi(X, mask=MASK))
    for row, length in enumerate(LENGTHS):
        alone = np.asarray(bi(X[row : row + 1, :length]))[0]  # no padding at all
        np.testing.assert_allclose(padded[row, :length], alone, atol=1e-5)
        assert np.all(padded[row, length:] == 0)


def test_bidirectional_backward_starts_at_last_real_token():
    bi = Bidirectional(Recurrent(LSTMCell(4), return_sequences=True))
    out = np.asarray(bi(X, mask=MASK))
    # the backward half at the last real position has read exactly one token
    backward_only = bi.backward_layer
    for row, length in enumerate(LENGTHS):
        one_step = np.asarray(backward_only(X[row : row + 1, length - 1 : length]))[0, 0]
        np.testing.assert_allclose(out[row, length - 1, 4:], one_step, atol=1e-5)


def test_bidirectional_matches_keras_bidirectional():
    keras_bi = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True))
    keras_bi.build(X.shape)
    bi = Bidirectional(Recurrent(LSTMCell(4), return_sequences=True))
    bi.build(X.shape)
    bi.forward_layer.cell.set_weights(keras_bi.forward_layer.cell.get_weights())
    bi.backward_layer.cell.set_weights(keras_bi.backward_layer.cell.get_weights())
    np.testing.assert_allclose(
        np.asarray(bi(X, mask=MASK))[MASK], np.asarray(keras_bi(X, mask=MASK))[MASK], atol=1e-5
    )


def test_reverse_padded_is_an_involution_that_keeps_padding():
    ids = np.array([[1, 2, 3, 0], [4, 5, 0, 0]])
    rev = np.asarray(reverse_padded(ids[..., None], np.array([3, 2])))[..., 0]
    np.testing.assert_array_equal(rev, [[3, 2, 1, 0], [5, 4, 0, 0]])
    np.testing.assert_array_equal(
        np.asarray(reverse_padded(rev[..., None], np.array([3, 2])))[..., 0], ids
    )


def test_stacked_equals_layers_applied_in_turn():
    stack = StackedRecurrent("gru", units=[4, 3], dropout=0.5)
    out, states = stack(X, mask=MASK, training=False)
    x = X
    for layer, state in zip(stack.rnn_layers, states):
        y, h = layer(x, mask=MASK)
        np.testing.assert_allclose(state[0], h, atol=1e-6)
        x = y
    np.testing.assert_allclose(out, x, atol=1e-6)
    assert out.shape == (3, 6, 3)


def test_stacked_dropout_only_in_training():
    stack = StackedRecurrent("lstm", units=4, num_layers=2, dropout=0.5)
    a = np.asarray(stack(X, training=False)[0])
    np.testing.assert_allclose(a, np.asarray(stack(X, training=False)[0]))
    assert not np.allclose(a, np.asarray(stack(X, training=True)[0]))


def test_stacked_residual_adds_input():
    stack = StackedRecurrent("lstm", units=4, num_layers=2, residual=True)
    out, _ = stack(X)
    y0 = stack.rnn_layers[0](X)[0]
    y1 = stack.rnn_layers[1](y0)[0]
    np.testing.assert_allclose(out, np.asarray(y0) + np.asarray(y1), atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [
        lambda: Recurrent(LSTMCell(3), return_sequences=True, go_backwards=True),
        lambda: Bidirectional(Recurrent(GRUCell(3), return_sequences=True), merge_mode="sum"),
        lambda: StackedRecurrent(
            "simple_rnn", units=[3, 2], dropout=0.1, residual=True, bidirectional=True
        ),
    ],
)
def test_layer_config_round_trip(layer):
    original = layer()
    original.build(X.shape)
    clone = original.__class__.from_config(original.get_config())
    clone.build(X.shape)
    clone.set_weights(original.get_weights())
    assert clone.get_config() == original.get_config()
    a, b = original(X, mask=MASK), clone(X, mask=MASK)
    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_stateful_needs_fixed_batch():
    layer = Recurrent(LSTMCell(3), stateful=True)
    with pytest.raises(ValueError, match="fixed batch size"):
        layer.build((None, 5, 2))


def _loss_and_gradients(cell, jit_time_loop, masked, go_backwards, return_sequences, dtype):
    keras.utils.set_random_seed(1)
    layer = Recurrent(
        cell(4, dtype=dtype),
        return_sequences=return_sequences,
        return_state=True,
        go_backwards=go_backwards,
        dtype=dtype,
    )
    x = tf.constant(X, dtype)
    layer.build(x.shape)
    layer.jit_time_loop = jit_time_loop
    initial = [
        tf.constant(np.random.default_rng(i).normal(size=(3, 4)), dtype)
        for i, _ in enumerate(layer.state_sizes)
    ]
    weights = tf.constant(np.random.default_rng(9).normal(size=(3, 6, 4)), dtype)

    def loss_fn():
        output, *states = layer(x, mask=MASK if masked else None, initial_state=initial)
        if return_sequences:
            loss = tf.reduce_sum(output * weights)
        else:
            loss = tf.reduce_sum(output * weights[:, 0])
        return loss + sum(tf.reduce_sum(s * s) for s in states)

    with tf.GradientTape() as tape:
        tape.watch([x, *initial])
        loss = loss_fn()
    grads = tape.gradient(loss, [x, *initial, *layer.trainable_weights])
    return layer, loss_fn, float(loss), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("cell", [SimpleRNNCell, LSTMCell, GRUCell])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_compiled_time_loop_gradients_equal_the_graph_loop(
    cell, masked, go_backwards, return_sequences
):
    # the compiled loop (hand-written backward for SimpleRNN/LSTM, recomputed forward for GRU)
    # against TensorFlow's automatic differentiation of the plain while loop: inputs, initial
    # states, all weights; padded rows, last-output and final-state gradients included
    args = (masked, go_backwards, return_sequences, "float32")
    _, _, loss, grads = _loss_and_gradients(cell, False, *args)
    layer, _, compiled_loss, compiled_grads = _loss_and_gradients(cell, True, *args)
    assert (backward_rule(layer.cell) is not None) == (cell is not GRUCell)
    assert layer.uses_fast_time_loop
    np.testing.assert_allclose(compiled_loss, loss, rtol=1e-5)
    for ours, reference in zip(compiled_grads, grads, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", [SimpleRNNCell, LSTMCell])
def test_hand_written_backward_matches_finite_differences(cell):
    # float64, entries of recurrent_kernel across all gate blocks perturbed by +-1e-6
    layer, loss_fn, _, grads = _loss_and_gradients(cell, True, True, False, True, "float64")
    kernel = layer.cell.recurrent_kernel
    analytic = grads[-2 if layer.cell.use_bias else -1]  # trainable: kernel, recurrent, bias
    assert analytic.shape == tuple(kernel.shape)
    original = kernel.numpy()
    width = kernel.shape[1]
    for index in [(0, 0), (1, width // 3), (3, width // 2), (2, width - 1)]:
        values = []
        for sign in (1, -1):
            perturbed = original.copy()
            perturbed[index] += sign * 1e-6
            kernel.assign(perturbed)
            values.append(float(loss_fn()))
        kernel.assign(original)
        numeric = (values[0] - values[1]) / 2e-6
        assert numeric == pytest.approx(analytic[index], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("cell", [LSTMCell, GRUCell])
def test_implementation_is_serialized_and_fast_equals_reference(cell):
    outputs = {}
    for implementation in ("reference", "fast"):
        keras.utils.set_random_seed(1)
        layer = Recurrent(cell(4), return_sequences=True, implementation=implementation)
        outputs[implementation] = np.asarray(layer(X, mask=MASK))
        assert layer.uses_fast_time_loop == (implementation == "fast")
        assert Recurrent.from_config(layer.get_config()).implementation == implementation
    np.testing.assert_allclose(outputs["fast"], outputs["reference"], atol=1e-6)
    reference = Recurrent(cell(4), implementation="reference")
    reference.jit_time_loop = True  # the compile-time switch cannot override "reference"
    assert not reference.uses_fast_time_loop
    stack = StackedRecurrent("lstm", units=4, num_layers=2, implementation="fast")
    assert [layer.implementation for layer in stack.rnn_layers] == ["fast", "fast"]
    assert StackedRecurrent.from_config(stack.get_config()).implementation == "fast"
    with pytest.raises(ValueError, match="implementation"):
        Recurrent(cell(4), implementation="cudnn")


def test_residual_connection_is_the_one_rule_of_the_stack():
    from keras_rnnlm.layers import residual_connection

    y, x = np.full((2, 4), 3.0, "float32"), np.ones((2, 4), "float32")
    np.testing.assert_array_equal(residual_connection(True, 1, y, x), y + x)
    np.testing.assert_array_equal(residual_connection(True, 0, y, x), y)  # reads embeddings
    np.testing.assert_array_equal(residual_connection(False, 1, y, x), y)
    np.testing.assert_array_equal(residual_connection(True, 1, y, np.ones((2, 5))), y)  # widths
    steps = residual_connection(True, 2, [y, 2 * y], [x, x])
    np.testing.assert_array_equal(np.stack(steps), np.stack([y + x, 2 * y + x]))
    # the stack applies it: a residual 2-layer stack = layer 1's output + layer 0's output
    stack = StackedRecurrent(cell="simple_rnn", units=4, num_layers=2, residual=True)
    inputs = np.random.default_rng(0).normal(size=(2, 3, 4)).astype("float32")
    out, _ = stack(inputs)
    first = stack.rnn_layers[0](inputs)[0]
    second = stack.rnn_layers[1](first)[0]
    np.testing.assert_allclose(out, np.asarray(first) + np.asarray(second), atol=1e-6)


@pytest.mark.parametrize("cell", [LSTMCell, GRUCell])
@pytest.mark.parametrize("parts", [2, 3])
def test_time_loop_in_row_parts_equals_the_graph_loop(cell, parts, monkeypatch):
    # the batch's rows split into parts run as separate compiled loops (one per core): 3 rows
    # in 2 parts (uneven) or 3; masked, initial states, every gradient, against the plain loop
    monkeypatch.setattr(time_loop, "MIN_ROWS_PER_PART", 1)
    monkeypatch.setattr(time_loop, "_cpu_cores", lambda: parts)
    assert time_loop.row_parts(3) == parts and time_loop.row_parts(None) == parts
    args = (True, False, True, "float32")
    _, _, loss, grads = _loss_and_gradients(cell, False, *args)
    _, _, split_loss, split_grads = _loss_and_gradients(cell, True, *args)
    np.testing.assert_allclose(split_loss, loss, rtol=1e-5)
    for ours, reference in zip(split_grads, grads, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_row_parts_share_one_kernel_transpose_and_one_kernel_gradient_product(parts, monkeypatch):
    # the parts' backward loops run under one gradient: the recurrent kernel is transposed
    # once and its gradient is one product over all rows (not one of each per part)
    monkeypatch.setattr(time_loop, "MIN_ROWS_PER_PART", 1)
    monkeypatch.setattr(time_loop, "_cpu_cores", lambda: parts)
    layer = Recurrent(LSTMCell(4), return_sequences=True)
    layer.build(X.shape)
    layer.jit_time_loop = True
    kernel = layer.cell.recurrent_kernel

    @tf.function
    def kernel_gradient(x):
        with tf.GradientTape() as tape:
            outputs = layer(x, mask=MASK, training=True)
        return tape.gradient(outputs, kernel)

    graph = kernel_gradient.get_concrete_function(tf.constant(X)).graph
    shape = tuple(kernel.shape)  # (4, 16); the input kernel's is (5, 16)
    found = {
        kind: [op for op in graph.get_operations() if op.type == kind and op.outputs[0].shape == s]
        for kind, s in (("Transpose", shape[::-1]), ("MatMul", shape))
    }
    assert [len(found["Transpose"]), len(found["MatMul"])] == [1, 1]
    assert time_loop.row_parts(3) == parts


def test_time_loop_in_row_parts_with_a_batch_known_only_at_run_time(monkeypatch):
    monkeypatch.setattr(time_loop, "_cpu_cores", lambda: 2)
    outputs = {}
    for fast_loop in (False, True):
        keras.utils.set_random_seed(1)
        layer = Recurrent(LSTMCell(4), return_sequences=True)
        layer.build(X.shape)
        layer.jit_time_loop = fast_loop
        run = tf.function(
            lambda x, mask, layer=layer: layer(x, mask=mask),
            input_signature=[
                tf.TensorSpec((None, 6, 5), tf.float32),
                tf.TensorSpec((None, 6), tf.bool),
            ],
        )
        outputs[fast_loop] = np.asarray(run(X, MASK))
    np.testing.assert_allclose(outputs[True], outputs[False], atol=1e-6)
    assert time_loop.row_parts(20) == 2 and time_loop.row_parts(12) == 1  # 8 rows at least


def _bf16_training_run(cell, matmul_dtype, training):
    keras.utils.set_random_seed(1)
    layer = Recurrent(cell(4), return_sequences=True)
    layer.build(X.shape)
    layer.jit_time_loop = True
    layer.training_matmul_dtype = matmul_dtype
    weights = tf.constant(np.random.default_rng(9).normal(size=(3, 6, 4)), tf.float32)
    x = tf.constant(X)
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = layer(x, mask=MASK, training=training)
        loss = tf.reduce_sum(outputs * weights)
    grads = tape.gradient(loss, [x, *layer.trainable_weights])
    return np.asarray(outputs), [np.asarray(g) for g in grads]


@pytest.mark.parametrize("cell", [SimpleRNNCell, LSTMCell, GRUCell])
def test_bfloat16_projections_in_the_fast_training_step(cell):
    # training_matmul_dtype="bfloat16" (set by compile from output_dtype): the input projection
    # and the weight-gradient products get bf16 operands in training calls only; against the
    # float32 loop: within bf16 rounding (8 significant bits) but not equal; inference calls
    # and the GRU (whose projection is not x @ kernel + bias) unchanged
    outputs, grads = _bf16_training_run(cell, "float32", True)
    low_outputs, low_grads = _bf16_training_run(cell, "bfloat16", True)
    np.testing.assert_allclose(low_outputs, outputs, atol=1e-2 * np.abs(outputs).max())
    for ours, reference in zip(low_grads, grads, strict=True):
        scale = np.abs(reference).max()
        np.testing.assert_allclose(ours, reference, atol=3e-2 * scale)
    changed = any(not np.array_equal(a, b) for a, b in zip(low_grads, grads, strict=True))
    assert changed == (cell is not GRUCell)
    inference, inference_grads = _bf16_training_run(cell, "bfloat16", False)
    np.testing.assert_array_equal(inference, outputs)
    for ours, reference in zip(inference_grads, grads, strict=True):
        np.testing.assert_array_equal(ours, reference)
