"""The datasets ``fit``/``evaluate`` iterate run without tf.data's autotuner (the end-of-epoch stall).

Checked by inspecting the dataset Keras hands to the distribution strategy (every dataset
``fit``/``evaluate`` iterates passes through ``experimental_distribute_dataset``), not by timing;
a plain ``keras.Model`` on the same inputs is the control that shows the autotuner is on by default.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm import MaskedLanguageModelLoss, RNNLanguageModel
from keras_rnnlm.data.fit_inputs import array_dataset, without_autotuner
from keras_rnnlm.task_models import SentenceClassifier

VOCAB, T = 13, 5


@pytest.fixture
def seen_datasets(monkeypatch):
    """Options of every dataset ``fit``/``evaluate`` iterate: the autotuner's ``enabled`` flag."""
    seen = []
    strategy_class = type(tf.distribute.get_strategy())
    original = strategy_class.experimental_distribute_dataset

    def spy(self, dataset, *args, **kwargs):
        seen.append(dataset.options().autotune.enabled)
        return original(self, dataset, *args, **kwargs)

    monkeypatch.setattr(strategy_class, "experimental_distribute_dataset", spy)
    return seen


def _data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, VOCAB, size=(n, T)).astype("int32")
    y = rng.integers(1, VOCAB, size=(n, T)).astype("int32")
    return x, y


def _model(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    model = RNNLanguageModel(VOCAB, embedding_dim=4, units=6, cell="lstm", **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=MaskedLanguageModelLoss())
    return model


def test_numpy_and_dataset_inputs_run_without_autotuner(seen_datasets):
    x, y = _data()
    model = _model()
    model.fit(x, y, batch_size=4, epochs=1, validation_split=0.25, verbose=0)
    model.fit(x, y, batch_size=4, validation_data=(x[:4], y[:4]), verbose=0)
    user = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).prefetch(tf.data.AUTOTUNE)
    model.fit(user, epochs=1, validation_data=user, shuffle=False, verbose=0)
    model.evaluate(x, y, batch_size=4, verbose=0)
    model.evaluate(user, verbose=0)
    assert len(seen_datasets) >= 7
    assert all(enabled is False for enabled in seen_datasets), seen_datasets


def test_control_plain_keras_model_has_the_autotuner_on(seen_datasets):
    """Without the mixin Keras's own array pipeline keeps the autotuner (the stall's cause)."""
    x, y = _data()
    inputs = keras.Input((T,), dtype="int32")
    outputs = keras.layers.Dense(VOCAB)(keras.layers.Embedding(VOCAB, 4)(inputs))
    plain = keras.Model(inputs, outputs)
    plain.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.fit(x, y, batch_size=4, verbose=0)
    assert seen_datasets and seen_datasets[0] is not False


def test_task_models_run_without_autotuner(seen_datasets):
    x, _ = _data()
    labels = (x[:, 0] % 2).astype("int32")
    model = SentenceClassifier(VOCAB, num_classes=2, embedding_dim=4, units=6)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, labels, batch_size=4, verbose=0)
    assert seen_datasets and all(enabled is False for enabled in seen_datasets)


def test_array_batches_equal_keras_own_pipeline():
    """shuffle=False: the same batches as Keras's array pipeline, so the same training."""
    x, y = _data(n=11)  # a last partial batch of 3
    weights = np.linspace(0.5, 1.5, 11).astype("float32")
    ours = _model()
    history = ours.fit(
        x, y, sample_weight=weights, batch_size=4, epochs=2, shuffle=False,
        validation_split=0.3, verbose=0,
    )  # fmt: skip
    stock = _model()
    stock_history = keras.Model.fit(
        stock, x, y, sample_weight=weights, batch_size=4, epochs=2, shuffle=False,
        validation_split=0.3, verbose=0,
    )  # fmt: skip
    for a, b in zip(ours.get_weights(), stock.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(history.history[key], stock_history.history[key], rtol=1e-6)


def test_positional_fit_arguments_are_understood():
    x, y = _data(n=8)
    model = _model()
    history = model.fit(x, y, 4, 2, 0)  # batch_size=4, epochs=2, verbose=0
    assert len(history.history["loss"]) == 2


def test_shuffled_array_dataset_is_a_permutation_each_epoch():
    x = np.arange(10, dtype="int32")
    dataset = array_dataset(x, batch_size=3, shuffle=True)
    epochs = [np.concatenate(list(dataset.as_numpy_iterator())) for _ in range(2)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(10))
    assert [len(b) for b in dataset.as_numpy_iterator()] == [3, 3, 3, 1]
    assert dataset.options().autotune.enabled is False
    assert dataset.element_spec.shape.as_list() == [None]  # a partial batch: dynamic, as Keras
    full = array_dataset(np.zeros((6, 2)), batch_size=3)
    assert full.element_spec.shape.as_list() == [3, 2]  # all batches full: static, as Keras


def test_stateful_model_trains_on_arrays():
    """A stateful model needs the static batch dimension Keras's array pipeline gives."""
    x, y = _data(n=8)
    model = _model(stateful=True)
    history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_without_autotuner_keeps_elements():
    dataset = tf.data.Dataset.range(7).batch(3).prefetch(tf.data.AUTOTUNE)
    quiet = without_autotuner(dataset)
    assert [b.tolist() for b in quiet.as_numpy_iterator()] == [[0, 1, 2], [3, 4, 5], [6]]
    assert quiet.options().autotune.enabled is False
