"""Stream mode (stateful, truncated BPTT) under MirroredStrategy: row-sharded states and input.

The multi-replica checks run ``distributed_stream_script.py`` in a fresh process (2 logical
CPU devices must be configured before TensorFlow starts), with a hard timeout.
"""

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

from keras_rnnlm.data.pipelines import stream_batches
from keras_rnnlm.distributed_stream import (
    check_stream_batch,
    distribute_stream_dataset,
    replica_states,
    single_device_copy,
    stream_dataset_fn,
)
from keras_rnnlm.models import RNNLanguageModel

HERE = Path(__file__).parent
SCRIPT = HERE / "distributed_stream_script.py"
CLI_SCRIPT = HERE / "distribute_parity_script.py"  # "cli": keras-rnnlm train on 2 logical CPUs
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def _run_script(optimizer):
    return script_result(SCRIPT, optimizer)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_replicas_train_the_stream_as_one_device(optimizer):
    result = _run_script(optimizer)
    assert result["replicas"] == 2 and result["steps"] == 20
    # clipping binds: the first gradient is far above the limit; SGD moves lr x clip every step
    assert result["first_gradient_norm"] > 3 * result["clip"]
    if optimizer == "sgd":
        limit = result["learning_rate"] * result["clip"]
        assert all(abs(n - limit) < 1e-3 * limit for n in result["update_norms"])
    assert result["max_weight_change"] > 0.05 and result["state_norm"] > 0.1  # it trained
    # replicas fed by row slices, by Keras's split of the global batch, and one device on the
    # fast path: all the one-device reference step, weights and carried states
    for run in ("mirrored_rows", "mirrored_keras_split", "single_fast_path"):
        assert result[run]["max_weight_difference_scaled"] <= 1e-5, run
        assert result[run]["max_state_difference"] <= 1e-5, run
        assert result[run]["loss_difference"] <= 1e-5, run
    # the checkpointed/saved variables are the same on 1 and 2 replicas (states (B, units))
    assert result["same_saved_variables"]


@pytest.mark.slow
def test_cli_stream_mode_on_two_replicas_matches_one_device(tmp_path):
    lines = ["the cat sat on the mat", "a dog sat on a log", "the cat and the dog"] * 20
    (tmp_path / "train.txt").write_text("\n".join(lines))
    args = ["train", "--train-file", str(tmp_path / "train.txt"), "--units", "8",
            "--embedding-dim", "8", "--epochs", "2", "--batch-size", "8", "--mode", "stream",
            "--verbose", "0"]  # fmt: skip
    mirrored = subprocess.run(
        [sys.executable, str(CLI_SCRIPT), "cli", *args[1:], "--output", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    code = "import sys; from keras_rnnlm.cli import main; sys.exit(main(sys.argv[1:]))"
    single = subprocess.run(
        [sys.executable, "-c", code, *args, "--output", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    m, s = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("m", "s"))
    assert (m["replicas"], s["replicas"]) == (2, 1)
    assert m["train"]["perplexity"] == pytest.approx(s["train"]["perplexity"], rel=1e-5)
    assert m["history"]["loss"] == pytest.approx(s["history"]["loss"], rel=1e-5)
    # the model trained on 2 replicas loads and runs on one device (states saved (B, units))
    model = keras.saving.load_model(tmp_path / "m" / "model.keras", compile=False)
    assert model.stateful and model(np.ones((8, 3), np.int32)).shape == (8, 3, m["vocabulary_size"])


def test_check_stream_batch_refuses_batches_the_replicas_cannot_split():
    assert check_stream_batch(20, 4) == 5
    with pytest.raises(ValueError, match="--batch-size 10 is not a multiple of the 4 replicas"):
        check_stream_batch(10, 4)


def _elements(dataset):
    return [tuple(part.numpy() for part in element) for element in dataset]


@pytest.mark.parametrize("pipelines", [1, 2])
def test_dataset_fn_gives_each_replica_the_same_rows_of_every_batch(pipelines):
    stream = np.arange(1, 4 * (3 * 5 + 1) + 1)
    inputs, targets = stream_batches(stream, 4, 5)  # 3 batches of 4 rows
    fn = stream_dataset_fn(inputs, targets)
    replica_rows = {}
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pipeline, num_replicas_in_sync=2)
        elements = _elements(fn(context))
        local = 2 // pipelines
        for k, (x, y) in enumerate(elements):
            replica = pipeline * local + k % local  # round-robin over the local replicas
            replica_rows.setdefault(replica, []).append((x, y))
    for replica, rows in replica_rows.items():
        assert len(rows) == 3  # one slice per global batch
        for batch, (x, y) in enumerate(rows):
            np.testing.assert_array_equal(x, inputs[batch, 2 * replica : 2 * replica + 2])
            np.testing.assert_array_equal(y, targets[batch, 2 * replica : 2 * replica + 2])
        # the slices continue each other: row r of batch i+1 starts where batch i ended
        np.testing.assert_array_equal(rows[1][0][:, 0], rows[0][0][:, -1] + 1)


def test_single_replica_dataset_skips_and_repeats_whole_batches():
    inputs = np.arange(4 * 2 * 3).reshape(4, 2, 3)
    data = distribute_stream_dataset(tf.distribute.get_strategy(), inputs, inputs, True, 5)
    firsts = [int(x[0, 0]) for x, _ in data.take(4)]
    assert firsts == [int(inputs[i % 4, 0, 0]) for i in (1, 2, 3, 0)]
    with pytest.raises(ValueError, match="num_batches, batch, num_steps"):
        stream_dataset_fn(inputs[0], inputs[0])


def test_one_device_stateful_states_are_saved_weights_and_reset():
    model = RNNLanguageModel(20, units=4, embedding_dim=4, stateful=True)
    model.build((3, None))
    assert len(model.non_trainable_weights) == 4  # (h, c) x 2 layers, saved with the model
    model(np.ones((3, 2), np.int32))
    states = [s for layer in replica_states(model) for s in layer]
    assert all(s.shape == (3, 4) for s in states) and any(np.any(s != 0) for s in states)
    model.reset_states()
    assert all(not np.any(s) for layer in replica_states(model) for s in layer)


def test_single_device_copy_continues_like_the_original():
    model = RNNLanguageModel(20, units=4, embedding_dim=4, stateful=True)
    model.build((3, None))
    copy = single_device_copy(model)
    tokens = np.arange(1, 7, dtype=np.int32).reshape(3, 2)
    for _ in range(2):  # the second call starts from the carried states
        np.testing.assert_allclose(copy(tokens), model(tokens), atol=1e-6)
    with pytest.raises(ValueError, match="not"):
        single_device_copy(RNNLanguageModel(20, units=4, embedding_dim=4))
