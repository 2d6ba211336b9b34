"""TPU readiness without a TPU: the stream-mode train step compiles with XLA
(``jit_compile=True``) on static shapes with no float64, inspected in its HLO.

What is not run here: a TPU (none on this machine). The HLO is the CPU compilation of the
same step; a TPU compiles the same computation for its own backend.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm import distribute
from keras_rnnlm.data.pipelines import stream_batches, stream_dataset
from keras_rnnlm.distributed_stream import dense_duplicate_rows_sum, stream_dataset_fn
from keras_rnnlm.evaluation import evaluate_perplexity
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.training import compile_language_model

BATCH, STEPS, VOCABULARY, UNITS = 4, 5, 30, 16
DYNAMIC_DIMENSION = re.compile(r"\b\w+\[[^\]]*(?:<=|\?)[^\]]*\]")  # s32[<=20], f32[?,8]
RNG = np.random.default_rng(0)
INPUTS = tf.constant(RNG.integers(1, VOCABULARY, (BATCH, STEPS)), tf.int32)
TARGETS = tf.constant(RNG.integers(1, VOCABULARY, (BATCH, STEPS)), tf.int32)


def _stream_model(optimizer="sgd", jit_compile=True):
    keras.utils.set_random_seed(3)
    model = RNNLanguageModel(VOCABULARY, units=UNITS, embedding_dim=8, stateful=True)
    model.build((BATCH, None))
    rate = {"sgd": 0.5, "adam": 0.01}[optimizer]
    compile_language_model(model, optimizer, rate, 0.05, jit_compile=jit_compile)
    return model


def _train_step_hlo(model):
    step = tf.function(lambda x, y: model.train_step((x, y)), jit_compile=True)
    return step.experimental_get_compiler_ir(INPUTS, TARGETS)(stage="hlo")


def _hlo_of(fn, *args):
    return tf.function(fn, jit_compile=True).experimental_get_compiler_ir(*args)(stage="hlo")


def test_the_checks_detect_float64_and_dynamic_shapes():
    """The two inspections below can fail: they see f64 and bounded-dynamic dimensions."""
    x = tf.constant([1.0, -2.0, 3.0])
    assert "f64[" in _hlo_of(lambda v: tf.cast(v, tf.float64) * 2.0, x)
    assert DYNAMIC_DIMENSION.search(_hlo_of(lambda v: tf.boolean_mask(v, v > 0), x))
    assert not DYNAMIC_DIMENSION.search(_hlo_of(lambda v: v * 2.0, x))


def test_stream_batches_have_static_shapes():
    stream = RNG.integers(1, VOCABULARY, 500)
    dataset = stream_dataset([stream.tolist()], BATCH, STEPS)
    for spec in dataset.element_spec:
        assert spec.shape.as_list() == [BATCH, STEPS]
    inputs, targets = stream_batches(stream, BATCH, STEPS)
    context = tf.distribute.InputContext(num_input_pipelines=1, num_replicas_in_sync=2)
    for spec in stream_dataset_fn(inputs, targets)(context).element_spec:
        assert spec.shape.as_list() == [BATCH // 2, STEPS]


def test_stream_train_step_compiles_without_float64():
    hlo = _train_step_hlo(_stream_model("adam"))
    assert "f64" not in hlo  # Perplexity keeps float32 pairs (metrics.CompensatedSum)
    # the stateful step: both layers' carried (h, c) states are static f32[batch, units]
    entry = next(line for line in hlo.splitlines() if "entry_computation_layout" in line)
    assert entry.count(f"f32[{BATCH},{UNITS}]") >= 2 * 2 * 2  # 4 states, read and written


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_stream_train_step_has_static_shapes_with_a_dense_embedding_gradient(
    optimizer, monkeypatch
):
    """With duplicate embedding rows summed densely (``dense_duplicate_rows_sum``, the change
    asked of ``distribute.sum_duplicate_rows`` under XLA), every shape is static, and the
    XLA step trains as the graph step does."""
    monkeypatch.setattr(distribute, "sum_duplicate_rows", dense_duplicate_rows_sum)
    compiled = _stream_model(optimizer)
    hlo = _train_step_hlo(compiled)
    assert not DYNAMIC_DIMENSION.findall(hlo)
    assert "f64" not in hlo
    graph = _stream_model(optimizer, jit_compile=False)
    data = tf.data.Dataset.from_tensor_slices((INPUTS[None], TARGETS[None])).repeat(3)
    for model in (compiled, graph):
        model.fit(data, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(compiled.weights, graph.weights, strict=True):  # states included
        a, b = a.numpy(), b.numpy()
        assert np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))) <= 1e-5, a.shape


def test_stream_train_step_has_static_shapes_with_the_library_optimizers():
    assert not DYNAMIC_DIMENSION.findall(_train_step_hlo(_stream_model("sgd")))


@pytest.mark.parametrize("jit_compile", [True, "auto"])
def test_evaluate_metric_equals_the_exact_evaluation_loop(jit_compile):
    """``model.evaluate``'s Perplexity (float32 pairs) equals the float64 evaluation loop."""
    model = RNNLanguageModel(VOCABULARY, units=UNITS, embedding_dim=8)
    model.build((None, None))
    compile_language_model(model, "sgd", 0.5, jit_compile=jit_compile)
    targets = RNG.integers(1, VOCABULARY, (64, 12))
    targets[::3, 7:] = 0  # padding: unequal real-token counts per batch
    inputs = np.where(targets > 0, RNG.integers(1, VOCABULARY, targets.shape), 0)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, targets)).batch(8)
    metric = model.evaluate(dataset, verbose=0, return_dict=True)["perplexity"]
    exact = evaluate_perplexity(model, dataset)["perplexity"]
    assert abs(metric - exact) <= 1e-6 * exact
