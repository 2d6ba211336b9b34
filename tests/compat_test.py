"""Canaries for the private Keras hooks of ``keras_rnnlm.compat``: each test fails loudly if
Keras renames a hook or stops calling it. Also: the optimizers of ``make_optimizer`` clip
exactly like stock Keras ``global_clipnorm`` on one device."""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm import compat
from keras_rnnlm.losses import MaskedLanguageModelLoss
from keras_rnnlm.metrics import Perplexity
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.training import make_optimizer

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "name", ["_clip_gradients", "_all_reduce_sum_gradients", "_backend_update_step"]
)
def test_keras_optimizer_still_has_the_hook(name):
    assert callable(getattr(keras.optimizers.Optimizer, name, None)), name


def test_adam_moments_are_the_variables_keras_adam_updates():
    # compat.adam_moments reads Adam's private _momentums/_velocities/_get_variable_index
    variables = [keras.Variable(np.zeros(2, "float32")), keras.Variable(np.zeros(3, "float32"))]
    optimizer = keras.optimizers.Adam(learning_rate=0.1)
    optimizer.apply_gradients(zip([tf.ones(2), tf.fill([3], 2.0)], variables))
    for variable, grad in zip(variables, (1.0, 2.0), strict=True):
        m, v = compat.adam_moments(optimizer, variable)
        assert m.shape == v.shape == variable.shape
        np.testing.assert_allclose(np.asarray(m), (1 - 0.9) * grad, rtol=1e-6)  # after 1 step
        np.testing.assert_allclose(np.asarray(v), (1 - 0.999) * grad**2, rtol=1e-5)


class Spy(compat.OptimizerHooks, keras.optimizers.SGD):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        object.__setattr__(self, "calls", collections.Counter())  # untracked by Keras

    def clip_gradients_per_replica(self, grads):
        self.calls["clip"] += 1
        return super().clip_gradients_per_replica(grads)

    def after_cross_replica_sum(self, grads_and_vars):
        self.calls["sum"] += 1
        return super().after_cross_replica_sum(grads_and_vars)

    def fused_update_step(self, grads, trainable_variables, learning_rate):
        self.calls["update"] += 1
        return False


def test_keras_calls_every_optimizer_hook_once_per_apply():
    spy = Spy(learning_rate=1.0, global_clipnorm=1.0)
    variable = keras.Variable(np.zeros(2, "float32"))
    spy.apply_gradients([(tf.constant([3.0, 4.0]), variable)])  # norm 5: clipped to 1
    assert spy.calls == {"clip": 1, "sum": 1, "update": 1}
    # the default hooks keep Keras's own clipping and update
    np.testing.assert_allclose(np.asarray(variable), [-0.6, -0.8], atol=1e-6)


def test_a_fit_goes_through_the_optimizer_hooks():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    spy = Spy(learning_rate=0.1)
    model.compile(spy, "mse", jit_compile=False)
    model.fit(np.ones((4, 3)), np.ones((4, 1)), epochs=1, verbose=0)
    assert spy.calls["clip"] >= 1 and spy.calls["sum"] >= 1 and spy.calls["update"] >= 1


def _compiled_lm():
    model = RNNLanguageModel(12, units=4, embedding_dim=4, num_layers=1)
    model.build((None, None))
    model.compile("sgd", MaskedLanguageModelLoss(), [Perplexity()])
    return model


def test_update_loss_tracker_feeds_the_logged_loss():
    model = _compiled_lm()
    compat.build_compiled_metrics(model, np.array([[1, 2]], "int32"))
    compat.update_loss_tracker(model, tf.constant(3.0), 2)
    compat.update_loss_tracker(model, tf.constant(6.0), 1)
    assert float(model.get_metrics_result()["loss"]) == pytest.approx(4.0)  # (2*3 + 6) / 3


def test_build_compiled_metrics_registers_the_metrics():
    model = _compiled_lm()
    y = np.array([[1, 2, 0]], "int32")
    compat.build_compiled_metrics(model, y)
    metric = model._compile_metrics.metrics[0]
    assert isinstance(metric, Perplexity)
    metric.update_from_totals(np.log(5.0) * 2, 2.0)
    assert float(model.get_metrics_result()["perplexity"]) == pytest.approx(5.0, rel=1e-6)


def test_compile_config_value_is_saved_and_restored(tmp_path):
    model = _compiled_lm()
    compat.set_compile_config_value(model, "jit_compile", "recurrence")
    assert model.get_compile_config()["jit_compile"] == "recurrence"
    x = RNG.integers(1, 12, size=(2, 5)).astype("int32")
    model.fit(x, x, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    # compile_from_config ran compile(**config) and built the optimizer before its variables
    # were loaded: without it the restored step counter would be 0
    assert loaded.get_compile_config()["jit_compile"] == "recurrence"
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 1
    assert loaded._fast_path


def test_set_initial_epoch_from_on_train_begin_skips_epochs():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    seen = []

    class Resume(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            compat.set_initial_epoch(self.model, 3)

        def on_epoch_begin(self, epoch, logs=None):
            seen.append(epoch)

    model.fit(np.ones((2, 2)), np.ones((2, 1)), epochs=5, verbose=0, callbacks=[Resume()])
    assert seen == [3, 4]


def test_wrap_apply_gradients_sees_every_step_and_unwraps():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.build((None, 2))
    count = tf.Variable(0, trainable=False)

    def wrapper(original, grads_and_vars):
        count.assign_add(1)
        return original(grads_and_vars)

    compat.wrap_apply_gradients(model.optimizer, wrapper)
    model.make_train_function(force=True)
    model.fit(np.ones((6, 2)), np.ones((6, 1)), batch_size=2, epochs=1, verbose=0)
    assert int(count) == 3
    compat.unwrap_apply_gradients(model.optimizer)
    model.make_train_function(force=True)
    model.fit(np.ones((6, 2)), np.ones((6, 1)), batch_size=2, epochs=1, verbose=0)
    assert int(count) == 3
    assert "apply_gradients" not in vars(model.optimizer)


# ---- make_optimizer clips exactly like stock Keras global_clipnorm (one device) ----

# dense gradients whose norms (5, 0.5, 20) cross the limit 1 in both directions, so that the
# clipped and unclipped Adam trajectories differ (Adam is invariant to a constant scale only)
_GRADIENTS = [
    [np.array([3.0, 4.0], "float32"), np.array([[0.0]], "float32")],
    [np.array([0.3, 0.0], "float32"), np.array([[0.4]], "float32")],
    [np.array([0.0, 12.0], "float32"), np.array([[-16.0]], "float32")],
]


def _trajectory(optimizer):
    variables = [
        keras.Variable(np.zeros(2, "float32")),
        keras.Variable(np.zeros((1, 1), "float32")),
    ]
    path = []
    for grads in _GRADIENTS:
        optimizer.apply_gradients(zip([tf.constant(g) for g in grads], variables))
        path.append(np.concatenate([np.ravel(np.asarray(v)) for v in variables]))
    return np.array(path)


@pytest.mark.parametrize(
    "kind, stock",
    [
        ("sgd", lambda: keras.optimizers.SGD(0.5, global_clipnorm=1.0)),
        ("adam", lambda: keras.optimizers.Adam(0.1, global_clipnorm=1.0)),
    ],
)
def test_make_optimizer_clips_like_stock_keras_global_clipnorm(kind, stock):
    learning_rate = 0.5 if kind == "sgd" else 0.1
    ours = _trajectory(make_optimizer(kind, learning_rate, clip_norm=1.0))
    theirs = _trajectory(stock())
    # ours applies Adam with TensorFlow's fused kernel (keras_rnnlm.fast.adam), nearer float64
    # Adam than Keras's float32 update (tests/fast_test.py): rounding differs by ~2e-6
    np.testing.assert_allclose(ours, theirs, atol=1e-6 if kind == "sgd" else 5e-6)
    unclipped = _trajectory(make_optimizer(kind, learning_rate, clip_norm=None))
    assert np.max(np.abs(unclipped - theirs)) > 1e-2  # the clipping mattered
