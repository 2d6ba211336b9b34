"""``--strategy multi_worker`` for real: two worker processes on this machine (TF_CONFIG with
two free localhost ports), one run, exact against one device."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

portpicker = pytest.importorskip("portpicker", reason="pip install portpicker (the dev extra)")

SCRIPT = Path(__file__).with_name("multi_worker_parity_script.py")
TIMEOUT = 240  # seconds for a whole two-process launch (typically 40-80 s on 2 idle cores)
TRAIN_LINES = ["the cat sat on the mat", "a dog sat on a log", "the cat and the dog"] * 20


def cluster_env(index: int, ports: list[int], **extra) -> dict:
    """The environment of worker ``index`` of a localhost cluster on ``ports``."""
    tf_config = {
        "cluster": {"worker": [f"localhost:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    }
    return dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="2", **extra)


def run_workers(argv: list[str], envs: list[dict], timeout: float = TIMEOUT):
    """Start one process per environment and wait for all; every process is killed when the
    launch exceeds ``timeout`` (the test then fails instead of hanging)."""
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for env in envs
    ]
    try:
        outputs = [proc.communicate(timeout=timeout) for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"{argv[:4]}... still running after {timeout} s (a hang)")
    return [(proc.returncode, out, err) for proc, (out, err) in zip(procs, outputs, strict=True)]


def free_ports(n: int = 2) -> list[int]:
    return [portpicker.pick_unused_port() for _ in range(n)]


@pytest.mark.slow
def test_two_workers_train_one_run_written_by_the_chief_only(tmp_path):
    (tmp_path / "train.txt").write_text("\n".join(TRAIN_LINES))
    run = tmp_path / "run"
    scratch = [tmp_path / "tmp0", tmp_path / "tmp1"]  # each worker's TMPDIR
    for directory in scratch:
        directory.mkdir()
    ports = free_ports()
    envs = [cluster_env(i, ports, TMPDIR=str(scratch[i])) for i in range(2)]
    argv = [sys.executable, "-m", "keras_rnnlm.cli", "train", "--strategy", "multi_worker",
            "--train-file", str(tmp_path / "train.txt"), "--units", "8", "--embedding-dim",
            "8", "--epochs", "2", "--batch-size", "8", "--verbose", "2", "--output", str(run)]  # fmt: skip
    results = run_workers(argv, envs)
    for code, out, err in results:
        assert code == 0, err[-3000:]
        assert "2 replica(s) on 2 worker(s)" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["replicas"], metrics["workers"]) == (2, 2)
    assert (
        metrics["epochs_run"] == 2 and metrics["history"]["loss"][1] < metrics["history"]["loss"][0]
    )
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.keras", "config.json", "metrics.json", "model.keras", "vocabulary.json"
    ]  # fmt: skip
    # the non-chief wrote its copies to a temporary directory, deleted at the end
    assert [list(d.iterdir()) for d in scratch] == [[], []]


@pytest.mark.slow
def test_two_workers_apply_the_one_device_updates(tmp_path):
    """20 steps, unequal padding across the workers, clipping active: SGD and Adam on 2
    workers end where one device does (the fast path that one device runs by default)."""
    ports = free_ports()
    results = run_workers(
        [sys.executable, str(SCRIPT), "worker", str(tmp_path / "workers.npz")],
        [cluster_env(i, ports) for i in range(2)],
    )
    for code, _, err in results:
        assert code == 0, err[-3000:]
    single = subprocess.run(
        [sys.executable, str(SCRIPT), "single", str(tmp_path / "single.npz")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert single.returncode == 0, single.stderr[-3000:]
    workers, one = np.load(tmp_path / "workers.npz"), np.load(tmp_path / "single.npz")
    # with SGD at learning rate 1 every step moved the weights by exactly the clip norm
    np.testing.assert_allclose(one["sgd_step_norms"], 0.05, rtol=1e-4)
    assert one["sgd_step_norms"].size == 20
    for optimizer in ("sgd", "adam"):
        assert int(workers[f"{optimizer}_replicas"]) == 2
        names = [k for k in one.files if k.split("_")[0] == optimizer and k.split("_")[1].isdigit()]
        assert len(names) > 5
        for name in names:
            w, w1 = workers[name], one[name]
            assert np.max(np.abs(w - w1) / np.maximum(1.0, np.abs(w1))) <= 1e-5, name


def _cluster_envs() -> list[dict]:
    ports = free_ports()
    return [cluster_env(i, ports) for i in range(2)]


def _fault_corpus(path: Path) -> None:
    rng = np.random.default_rng(0)
    words = "the cat sat on mat a dog log and ran by big small red blue house tree".split()
    lines = [" ".join(rng.choice(words, rng.integers(3, 13))) for _ in range(1200)]
    path.write_text("\n".join(lines))


@pytest.mark.slow
def test_killed_worker_stops_the_other_and_the_same_command_resumes(tmp_path):
    """kill -9 one worker during epoch 2: the survivor exits non-zero within 2 minutes;
    restarting both resumes from epoch 1 and ends with the metrics of an uninterrupted run."""
    _fault_corpus(tmp_path / "train.txt")

    def argv(run):
        return [sys.executable, "-m", "keras_rnnlm.cli", "train", "--strategy", "multi_worker",
                "--train-file", str(tmp_path / "train.txt"), "--units", "8", "--embedding-dim",
                "8", "--epochs", "3", "--batch-size", "16", "--verbose", "0",
                "--output", str(run)]  # fmt: skip

    run, ports = tmp_path / "run", free_ports()
    procs = [subprocess.Popen(argv(run), env=cluster_env(i, ports), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (run / "backup" / "latest.npz").exists():  # epoch 1 is complete
            assert time.monotonic() < deadline and procs[0].poll() is None, "no epoch completed"
            time.sleep(0.2)
        time.sleep(1.0)
        procs[1].kill()  # SIGKILL during epoch 2
        killed = time.monotonic()
        _, err = procs[0].communicate(timeout=120)  # a hang fails here
        assert time.monotonic() - killed < 120
        assert procs[0].returncode not in (0, None), err[-2000:]
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    assert not (run / "model.keras").exists()
    # the same command on both workers resumes from the last completed epoch
    for code, _, err in run_workers(argv(run), _cluster_envs()):
        assert code == 0, err[-3000:]
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["resumed_at_epoch"] == 1 and resumed["epochs_run"] == 3
    whole = tmp_path / "whole"
    for code, _, err in run_workers(argv(whole), _cluster_envs()):
        assert code == 0, err[-3000:]
    uninterrupted = json.loads((whole / "metrics.json").read_text())
    assert resumed["workers"] == uninterrupted["workers"] == 2
    np.testing.assert_allclose(
        resumed["history"]["loss"], uninterrupted["history"]["loss"], rtol=1e-5
    )
    assert resumed["train"]["perplexity"] == pytest.approx(
        uninterrupted["train"]["perplexity"], rel=1e-5
    )


@pytest.mark.slow
def test_two_workers_train_stream_mode_like_one_device(tmp_path):
    """Stream mode (state carried across batches) on 2 workers: each worker reads its own rows of
    every global batch (row sharding, not TensorFlow's batch-alternating auto-shard), so the run
    ends with the one-device run's perplexities."""
    rng = np.random.default_rng(0)
    words = " ".join(TRAIN_LINES).split()
    lines = [" ".join(rng.choice(words, 7)) for _ in range(120)]
    (tmp_path / "train.txt").write_text("\n".join(lines[:100]))
    (tmp_path / "valid.txt").write_text("\n".join(lines[100:]))
    # float32: "auto" picks bfloat16 output matmuls on AVX512-BF16 CPUs, whose rounding
    # depends on how the batch is split between workers
    common = ["--mode", "stream", "--train-file", str(tmp_path / "train.txt"), "--valid-file",
              str(tmp_path / "valid.txt"), "--units", "8", "--embedding-dim", "8", "--epochs", "2",
              "--batch-size", "4", "--num-steps", "5", "--dropout", "0", "--optimizer", "sgd",
              "--learning-rate", "1.0", "--verbose", "0",
              "--output-dtype", "float32"]  # fmt: skip
    cli = [sys.executable, "-m", "keras_rnnlm.cli", "train"]
    single = subprocess.run(
        [*cli, *common, "--output", str(tmp_path / "one")], capture_output=True, text=True,
        timeout=TIMEOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    ports = free_ports()
    envs = [cluster_env(i, ports) for i in range(2)]
    argv = [*cli, *common, "--strategy", "multi_worker", "--output", str(tmp_path / "two")]
    for code, _, err in run_workers(argv, envs):
        assert code == 0, err[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (two["replicas"], two["workers"], two["mode"]) == (2, 2, "stream")
    for split in ("train", "valid"):
        assert two[split]["perplexity"] == pytest.approx(one[split]["perplexity"], rel=1e-5)
    import keras  # the weights after 2 epochs (about 80 steps, dropout 0): the one-device ones

    import keras_rnnlm.runs  # noqa: F401  (registers the classes load_model needs)

    weights = [
        keras.saving.load_model(tmp_path / r / "model.keras").weights for r in ("one", "two")
    ]
    for a, b in zip(*weights, strict=True):
        if a.trainable:
            a, b = np.asarray(a), np.asarray(b)
            assert np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a))) <= 1e-5, a.shape
