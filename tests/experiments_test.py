"""The long-range recall task and the (tiny versions of the) gradient experiments."""

import math

import keras
import numpy as np
import pytest

from keras_rnnlm import distribute
from keras_rnnlm.experiments import (
    SETTINGS,
    cell_parameters,
    clipping_experiment,
    compile_recall_classifier,
    format_table,
    gradient_ratio_table,
    long_range_accuracy,
    recall_classifier,
    scaled_orthogonal_gradients,
    units_for_budget,
)
from keras_rnnlm.tasks import FIRST_SYMBOL, RecallTask


def test_recall_label_depends_only_on_the_token_at_distance_d():
    task = RecallTask(distance=12, num_symbols=5, num_distractors=4)
    inputs, labels = task.sample(300, seed=0)
    assert inputs.shape == (300, 13) and labels.shape == (300,)
    np.testing.assert_array_equal(task.label(inputs), labels)
    assert set(np.unique(labels)) == set(range(5))
    # the token at distance d from the last position (index 0) determines the label ...
    symbols = np.arange(FIRST_SYMBOL, FIRST_SYMBOL + 5)
    assert np.isin(inputs[:, 0], symbols).all()
    assert not np.isin(inputs[:, 1:], symbols).any()
    # ... and changing every other token leaves it unchanged
    other_inputs, _ = task.sample(300, seed=1)
    changed = np.concatenate([inputs[:, :1], other_inputs[:, 1:]], axis=1)
    assert (changed[:, 1:] != inputs[:, 1:]).any()
    np.testing.assert_array_equal(task.label(changed), labels)
    # while changing that token changes it
    flipped = inputs.copy()
    flipped[:, 0] = FIRST_SYMBOL + (labels + 1) % 5
    assert (task.label(flipped) != labels).all()
    assert task.vocabulary_size == FIRST_SYMBOL + 9
    assert task.chance_accuracy == pytest.approx(0.2)
    again, _ = task.sample(300, seed=0)
    np.testing.assert_array_equal(again, inputs)
    with pytest.raises(ValueError):
        RecallTask(distance=-1)


def test_recall_classifier_shapes_and_forget_bias():
    task = RecallTask(distance=4)
    model = recall_classifier(task, "lstm", units=6, forget_bias=3.0)
    assert model(task.sample(2)[0]).shape == (2, task.num_symbols)
    bias = next(w for w in model.weights if w.name == "bias" and w.shape == (24,)).numpy()
    np.testing.assert_allclose(bias[6:12], 3.0)
    np.testing.assert_allclose(bias[:6], 0.0)


def test_equal_parameter_budget():
    budget = cell_parameters("lstm", 32, 16)
    for cell in ("simple_rnn", "gru", "lstm"):
        units = units_for_budget(cell, budget, 16)
        assert cell_parameters(cell, units, 16) <= budget < cell_parameters(cell, units + 1, 16)
    model = recall_classifier(RecallTask(2), "gru", units_for_budget("gru", budget, 16))
    gru_weights = sum(int(np.prod(w.shape)) for w in model.weights if "gru" in w.path)
    assert gru_weights == cell_parameters("gru", units_for_budget("gru", budget, 16), 16)


def test_scaled_orthogonal_experiment_respects_the_bound_below_one():
    rows = scaled_orthogonal_gradients(
        scales=(0.5, 0.9, 1.5), distances=(5, 10), units=8, embedding_dim=4, batch_size=4
    )
    assert len(rows) == 6
    for row in rows:
        if row["c"] < 1:
            assert row["within_bound"] and row["ratio"] <= row["bound"]
    assert keras.config.floatx() == "float32"
    assert "ratio" in format_table(rows).splitlines()[0]


def test_gradient_ratio_table_rows():
    rows = gradient_ratio_table(distances=(2, 4), units=4, embedding_dim=3, batch_size=2)
    cells_by_setting = {(r["setting"], r["cell"]) for r in rows}
    assert ("orthogonal, b_f=3", "gru") not in cells_by_setting  # b_f only changes LSTMs
    assert ("orthogonal, b_f=3", "lstm") in cells_by_setting
    for row in rows:
        assert math.isnan(row["c_ratio"]) == (row["cell"] != "lstm")
        assert row["h_ratio"] > 0
        if row["cell"] == "lstm":
            # the cell state's direct path multiplies by the forget gate f = sigmoid(b_f + ...)
            # at every step; with small weights f stays near sigmoid(b_f): ratio ~ f^k
            b_f = SETTINGS[row["setting"]]["forget_bias"]
            assert row["c_ratio"] == pytest.approx((1 / (1 + math.exp(-b_f))) ** row["k"], rel=0.15)
    # small uniform W_h: a SimpleRNN's gradient vanishes, by a factor < 0.1 per 2 steps
    uniform = {
        r["k"]: r["h_ratio"]
        for r in rows
        if r["setting"] == "uniform(0.1), b_f=1" and r["cell"] == "simple_rnn"
    }
    assert uniform[2] < 0.1 and uniform[4] < 0.1 * uniform[2]


def test_long_range_accuracy_learns_a_short_recall():
    rows = long_range_accuracy(
        distances=(2,),
        cells=("simple_rnn",),
        settings={
            "adam": {"init": "orthogonal, b_f=1", "optimizer": "adam", "learning_rate": 3e-2}
        },
        lstm_units=8,
        embedding_dim=8,
        train_size=512,
        test_size=256,
        epochs=4,
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["chance"] == pytest.approx(1 / 8)
    assert row["units"] == units_for_budget("simple_rnn", cell_parameters("lstm", 8, 8), 8)
    # distance 2 is easy: far above chance on held-out examples, and the loss fell below
    # half of the chance-level cross-entropy log(8)
    assert row["accuracy"] > 0.9
    assert row["final_train_loss"] < math.log(8) / 2


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_recall_classifier_is_compiled_with_make_optimizer(optimizer):
    model = recall_classifier(RecallTask(3), "gru", units=4)
    compile_recall_classifier(model, optimizer, learning_rate=0.25, clip_norm=0.5)
    expected = {"adam": distribute.Adam, "sgd": distribute.SGD}[optimizer]
    assert type(model.optimizer) is expected
    assert model.optimizer.global_clipnorm == 0.5 and model.optimizer.clipnorm is None
    assert float(model.optimizer.learning_rate) == pytest.approx(0.25)


def test_clipping_experiment_smoke():
    rows, traces = clipping_experiment(
        learning_rates=(0.5,),
        modes=("none", "global"),
        units=4,
        embedding_dim=4,
        num_sentences=60,
        batch_size=4,
        num_steps=10,
        epochs=1,
    )
    assert [r["clipping"] for r in rows] == ["none", "global"]
    trace = traces[(0.5, "global")]
    assert len(trace["loss"]) == len(trace["grad_norm"]) == len(trace["clipped"]) > 1
    # identical initial weights and first batch: the same first loss and gradient norm
    assert rows[0]["initial_loss"] == pytest.approx(rows[1]["initial_loss"], rel=1e-6)
    assert traces[(0.5, "none")]["grad_norm"][0] == pytest.approx(trace["grad_norm"][0], 1e-5)
    assert all(c == 0.0 for c in traces[(0.5, "none")]["clipped"])
