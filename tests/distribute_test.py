"""Exact global-norm clipping across replicas (MirroredStrategy on 2 logical CPU devices)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from script_results import script_result

from keras_rnnlm.distribute import SGD, cross_replica_sum, get_strategy
from keras_rnnlm.training import make_optimizer

SCRIPT = Path(__file__).with_name("distribute_parity_script.py")


def _parity(optimizer_kind):
    # logical devices must be configured before TensorFlow starts: a fresh process
    return script_result(SCRIPT, optimizer_kind, "nojit", timeout=300)


@pytest.mark.slow
def test_mirrored_update_equals_single_device_update():
    result = _parity("ours")
    assert result["replicas"] == 2
    # the step is clipped (limit 0.05, SGD lr 1: the update norm is the clip norm)...
    assert result["single_update_norm"] == pytest.approx(0.05, rel=1e-3)
    # ...and 2 replicas with unequal padding apply the same update as one device
    assert result["max_abs_difference"] < 1e-6
    assert result["mirrored_loss"] == pytest.approx(result["single_loss"], abs=1e-6)


@pytest.mark.slow
def test_keras_optimizer_clips_per_replica_and_exceeds_the_limit():
    """The bug the optimizers of keras_rnnlm.distribute fix: stock Keras clips each replica's
    share, so the summed update is longer than the limit."""
    result = _parity("keras")
    assert result["mirrored_update_norm"] > 1.3 * result["single_update_norm"]
    assert result["max_abs_difference"] > 1e-3


@pytest.mark.slow
def test_cli_trains_with_the_mirrored_strategy(tmp_path):
    lines = ["the cat sat on the mat", "a dog sat on a log", "the cat and the dog"] * 20
    (tmp_path / "train.txt").write_text("\n".join(lines))
    out = tmp_path / "run"
    args = ["--train-file", str(tmp_path / "train.txt"), "--units", "8", "--embedding-dim", "8",
            "--epochs", "2", "--batch-size", "8", "--verbose", "2", "--output", str(out)]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["replicas"] == 2
    loss = metrics["history"]["loss"]
    assert loss[1] < loss[0] and metrics["train"]["perplexity"] < 30
    # stream mode: each replica carries its rows' states (tests/distributed_stream_test.py
    # checks it equals one device); a batch the replicas cannot split is a clear error
    stream = [*args[:-1], str(tmp_path / "s"), "--mode", "stream"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "cli", *stream],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["mode"] == "stream"
    assert metrics["train"]["perplexity"] < 30
    odd = [*args[:-1], str(tmp_path / "o"), "--mode", "stream"]
    odd[odd.index("--batch-size") + 1] = "7"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "cli", *odd], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 2 and "7" in proc.stderr and "replicas" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_clipping_unchanged_on_one_device():
    grads = [tf.constant([3.0, 4.0]), tf.constant([12.0])]  # global norm 13
    variables = [keras.Variable([0.0, 0.0]), keras.Variable([0.0])]
    optimizer = make_optimizer("sgd", 1.0, clip_norm=1.3, clipping="global")
    assert isinstance(optimizer, SGD)
    optimizer.apply(grads, variables)
    np.testing.assert_allclose(variables[0].numpy(), [-0.3, -0.4], atol=1e-6)
    np.testing.assert_allclose(variables[1].numpy(), [-1.2], atol=1e-6)


@pytest.mark.parametrize("clip_norm", [None, 0.5, 100.0])
def test_fused_sgd_equals_keras_sgd_with_sparse_duplicate_rows(clip_norm):
    # our one-device SGD (clip factor folded into the learning rate, sparse rows kept sparse)
    # against keras.optimizers.SGD on the densified gradients: an embedding-like IndexedSlices
    # gradient whose row 1 appears twice (its norm counts the summed row), and dense ones
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(5, 3)), rng.normal(size=(3, 2)), rng.normal(size=(2,))]
    sparse = tf.IndexedSlices(
        tf.constant(rng.normal(size=(3, 3)), tf.float32),
        tf.constant([1, 4, 1]),
        tf.constant([5, 3]),
    )
    grads = [sparse, tf.constant(rng.normal(size=(3, 2)), tf.float32), tf.constant([2.0, -1.0])]
    dense_grads = [tf.convert_to_tensor(sparse), *grads[1:]]  # the truth: rows summed
    results = []
    for cls, given in ((SGD, grads), (keras.optimizers.SGD, dense_grads)):
        variables = [keras.Variable(v.astype("float32")) for v in start]
        optimizer = cls(learning_rate=0.7, global_clipnorm=clip_norm)
        optimizer.apply(given, variables)
        optimizer.apply(given, variables)  # twice: the second call runs the built optimizer
        results.append([v.numpy() for v in variables])
    for ours, keras_result in zip(*results, strict=True):
        np.testing.assert_allclose(ours, keras_result, rtol=1e-6, atol=1e-6)
    untouched = [0, 2, 3]  # rows without gradient keep their values exactly
    np.testing.assert_array_equal(results[0][0][untouched], start[0][untouched].astype("float32"))


def _applied_rows(optimizer, grad):
    variable = keras.Variable(np.zeros((4, 2), "float32"))
    optimizer.apply([grad], [variable])
    return -variable.numpy()  # SGD lr 1: the applied (clipped) gradient


def test_global_norm_counts_duplicate_rows_once_unlike_keras():
    from keras_rnnlm.distribute import global_clip_scale, sum_duplicate_rows

    sparse = tf.IndexedSlices(tf.constant([[3.0, 0.0], [0.0, 4.0]]), tf.constant([2, 2]), [4, 2])
    dense_norm = float(tf.norm(tf.convert_to_tensor(sparse)))  # row 2 = [3, 4]: norm 5
    assert dense_norm == 5.0
    assert float(global_clip_scale([sum_duplicate_rows(sparse)], 1.0)) == pytest.approx(0.2)
    overlapping = tf.IndexedSlices(
        tf.constant([[3.0, 4.0], [3.0, 4.0]]), tf.constant([1, 1]), [4, 2]
    )
    # the dense row is [6, 8] (norm 10): clipped to norm 1 here...
    assert float(global_clip_scale([sum_duplicate_rows(overlapping)], 1.0)) == pytest.approx(0.1)
    ours = _applied_rows(SGD(learning_rate=1.0, global_clipnorm=1.0), overlapping)
    np.testing.assert_allclose(ours[1], [0.6, 0.8], atol=1e-6)
    # ...while stock Keras squares the slices as they come (norm sqrt(50) = 7.07), so its
    # clipped update is longer than the limit: sqrt(2)
    stock = _applied_rows(keras.optimizers.SGD(learning_rate=1.0, global_clipnorm=1.0), overlapping)
    assert float(np.linalg.norm(stock)) == pytest.approx(2**0.5, rel=1e-5)


def test_fused_sgd_turns_weights_nan_on_a_non_finite_gradient():
    # as Keras does: a NaN/inf norm makes the clip factor NaN (StopOnDivergence then stops)
    variables = [keras.Variable([1.0, 2.0])]
    SGD(learning_rate=0.1, global_clipnorm=1.0).apply([tf.constant([np.inf, 1.0])], variables)
    assert np.isnan(variables[0].numpy()).all()


def test_per_variable_clipping_still_per_variable():
    grads = [tf.constant([3.0, 4.0]), tf.constant([12.0])]
    variables = [keras.Variable([0.0, 0.0]), keras.Variable([0.0])]
    make_optimizer("sgd", 1.0, clip_norm=1.0, clipping="per_variable").apply(grads, variables)
    np.testing.assert_allclose(variables[0].numpy(), [-0.6, -0.8], atol=1e-6)
    np.testing.assert_allclose(variables[1].numpy(), [-1.0], atol=1e-6)


def test_optimizer_round_trips_through_config():
    optimizer = make_optimizer("adam", 0.01, clip_norm=2.0)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is type(optimizer)
    assert restored.global_clipnorm == 2.0


def test_cross_replica_sum_is_identity_on_one_device():
    assert float(cross_replica_sum(tf.constant(3.0))) == 3.0


def test_unknown_strategy_and_multi_worker_without_tf_config(monkeypatch):
    with pytest.raises(ValueError, match="strategy must be one of"):
        get_strategy("nccl")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        get_strategy("multi_worker")
    assert get_strategy("default").num_replicas_in_sync == 1


def _train_cli(tmp_path, *args):
    """``keras-rnnlm train`` in a fresh process (devices are set up before TensorFlow starts)."""
    lines = ["the cat sat on the mat", "a dog sat on a log", "the cat and the dog"] * 20
    (tmp_path / "train.txt").write_text("\n".join(lines))
    tiny = ["--train-file", str(tmp_path / "train.txt"), "--units", "8", "--embedding-dim", "8",
            "--epochs", "1", "--verbose", "0"]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "keras_rnnlm.cli", "train", *tiny, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )


@pytest.mark.slow
def test_cpu_devices_give_the_replicas_asked_for(tmp_path):
    run = tmp_path / "run"
    proc = _train_cli(tmp_path, "--strategy", "mirrored", "--cpu-devices", "2",
                      "--batch-size", "8", "--output", str(run))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Strategy mirrored: 2 replica(s) on 1 worker(s)" in proc.stdout
    assert "found one device" not in proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["replicas"], metrics["workers"]) == (2, 1)
    # the batch is the global batch: 7 rows cannot be shared by 2 replicas
    odd = tmp_path / "odd"
    proc = _train_cli(tmp_path, "--strategy", "mirrored", "--cpu-devices", "2",
                      "--batch-size", "7", "--output", str(odd))  # fmt: skip
    assert proc.returncode == 2
    assert "batch_size 7" in proc.stderr and "2 replicas" in proc.stderr
    assert not odd.exists()


@pytest.mark.slow
def test_mirrored_on_one_device_says_so(tmp_path):
    run = tmp_path / "run"
    proc = _train_cli(tmp_path, "--strategy", "mirrored", "--batch-size", "8", "--output", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--strategy mirrored found one device: training on 1 replica" in proc.stderr
    assert json.loads((run / "metrics.json").read_text())["replicas"] == 1


def test_cpu_devices_settings_are_checked():
    from keras_rnnlm.runs import TrainConfig

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="cpu_devices must be a positive integer"):
            TrainConfig(strategy="mirrored", cpu_devices=bad).validate()
    with pytest.raises(ValueError, match="strategy 'default'"):
        TrainConfig(cpu_devices=2).validate()
    TrainConfig(strategy="mirrored", cpu_devices=2).validate()


def test_cpu_devices_too_late_is_a_clear_error():
    from keras_rnnlm.distribute import configure_cpu_devices

    tf.constant(1.0) + 1.0  # TensorFlow has initialised its devices
    present = len(tf.config.list_logical_devices("CPU"))
    configure_cpu_devices(present)  # what is there already: nothing to do
    with pytest.raises(ValueError, match="already initialised its devices"):
        configure_cpu_devices(present + 1)
    with pytest.raises(ValueError, match="positive integer"):
        configure_cpu_devices(0)


def test_chief_and_workers_from_tf_config(monkeypatch):
    from keras_rnnlm.distribute import is_chief, num_workers

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief() and num_workers(get_strategy("default")) == 1
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    for task, chief in ((("worker", 0), True), (("worker", 1), False)):
        config = {"cluster": cluster, "task": {"type": task[0], "index": task[1]}}
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
        assert is_chief() is chief
    with_chief = {"cluster": {"chief": ["localhost:0"], **cluster}}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({**with_chief, "task": {"type": "worker", "index": 0}})
    )
    assert not is_chief()
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({**with_chief, "task": {"type": "chief", "index": 0}})
    )
    assert is_chief()
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        is_chief()
