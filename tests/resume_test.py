"""Fault tolerance: kill -9 mid-epoch, rerun the same command, end as an uninterrupted run;
atomic checkpoints; same seed -> same loss curve."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_rnnlm.checkpoints import ResumableCheckpoint
from keras_rnnlm.runs import TrainConfig, train

# keras_rnnlm.runs.train calls model.fit on a tf.data.Dataset without shuffle=False, so Keras
# warns that shuffle=True is ignored (the data order is the pipeline's own, by design)
pytestmark = pytest.mark.filterwarnings("ignore:`shuffle=True` was passed:UserWarning")

LINES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog met on the mat",
    "the log was near the mat",
]


def _corpus(tmp_path, train_copies=1):
    rng = np.random.default_rng(0)
    words = " ".join(LINES).split()
    lines = [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(240)] + LINES * 10
    train = lines[:220] * train_copies
    for name, part in (("train", train), ("valid", lines[220:250]), ("test", lines[250:])):
        (tmp_path / f"{name}.txt").write_text("\n".join(part) + "\n")


def _args(tmp_path, output, mode="sentence"):
    # sentence batches come in several bucket lengths: graph mode spares one XLA compilation each
    jit = ["--no-jit-compile"] if mode == "sentence" else []
    return [
        "train",
        *jit,
        "--train-file",
        str(tmp_path / "train.txt"),
        "--valid-file",
        str(tmp_path / "valid.txt"),
        "--test-file",
        str(tmp_path / "test.txt"),
        "--mode",
        mode,
        "--units",
        "24",
        "--embedding-dim",
        "16",
        "--batch-size",
        "8",
        "--num-steps",
        "10",
        "--dropout",
        "0.2",  # the dropout random state must resume too
        "--optimizer",
        "adam",  # so do Adam's moments
        "--learning-rate",
        "0.01",
        "--decay-start-epoch",
        "2",  # and the learning-rate schedule
        "--decay-factor",
        "2",
        "--epochs",
        "4",
        "--seed",
        "7",
        "--verbose",
        "0",
        "--output",
        str(output),
    ]


def _cli(args, **kwargs):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(
        [sys.executable, "-m", "keras_rnnlm.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def _final(output):
    metrics = json.loads((output / "metrics.json").read_text())
    return metrics, [metrics[s]["perplexity"] for s in ("train", "valid", "test")]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sentence", "stream"])
def test_kill_9_mid_epoch_then_rerun_resumes_to_the_same_result(tmp_path, mode):
    # 220 lines made epochs of 0.1 s (stream) on the fast path, too short to kill one reliably;
    # 20 copies give epochs of about 1 s (stream) and 3 s (sentence) here.
    _corpus(tmp_path, train_copies=20)
    reference = _cli(_args(tmp_path, tmp_path / "reference", mode))
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]

    interrupted = tmp_path / "interrupted"
    proc = _cli(_args(tmp_path, interrupted, mode))
    backup = interrupted / "backup" / "latest.npz"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if backup.exists() and ResumableCheckpoint(backup.parent).completed_epochs() >= 1:
            break
        time.sleep(0.05)
    # Killed right away, somewhere inside the next epoch (or a checkpoint write). Sleeping 0.3 s
    # here once let the run finish all four epochs and delete its backup first (CI: completed 0).
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (interrupted / "metrics.json").exists()
    completed = ResumableCheckpoint(backup.parent).completed_epochs()
    assert 1 <= completed < 4

    resumed = _cli(_args(tmp_path, interrupted, mode))  # the same command again
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    metrics, perplexities = _final(interrupted)
    reference_metrics, reference_perplexities = _final(tmp_path / "reference")
    assert metrics["resumed_at_epoch"] == completed
    np.testing.assert_allclose(perplexities, reference_perplexities, rtol=1e-4)
    np.testing.assert_allclose(
        metrics["history"]["loss"], reference_metrics["history"]["loss"], rtol=1e-4
    )
    assert len(metrics["history"]["loss"]) == 4
    assert not backup.exists()  # removed once the run is complete


def test_resuming_with_another_configuration_is_refused(tmp_path):
    _corpus(tmp_path)
    config = TrainConfig(
        train_file=str(tmp_path / "train.txt"),
        units=8,
        embedding_dim=8,
        num_layers=1,
        epochs=1,
        verbose=0,
        jit_compile=False,
        output=str(tmp_path / "run"),
    )
    checkpoint = ResumableCheckpoint(tmp_path / "run" / "backup")
    train(config)
    # pretend the run was killed after epoch 1, then rerun with other settings
    (tmp_path / "run" / "model.keras").unlink()
    checkpoint.directory.mkdir(exist_ok=True)
    np.savez(checkpoint.path, meta=np.asarray(json.dumps({"epoch": 1, "history": {}})))
    changed = TrainConfig(**{**config.__dict__, "units": 12})
    with pytest.raises(ValueError, match="different configuration.*units"):
        train(changed)
    assert checkpoint.path.exists()  # nothing is lost


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    import keras

    from keras_rnnlm import checkpoints
    from keras_rnnlm.models import RNNLanguageModel
    from keras_rnnlm.training import compile_language_model

    model = RNNLanguageModel(20, units=8, embedding_dim=8, num_layers=1)
    model.build((None, None))
    compile_language_model(model, "adam", 0.01, jit_compile=False)
    x = np.random.default_rng(0).integers(1, 20, (8, 6)).astype("int32")
    callback = ResumableCheckpoint(tmp_path)
    model.fit(x, x, epochs=1, verbose=0, callbacks=[callback])
    saved = callback.path.read_bytes()

    def crash_midway(file, **arrays):
        file.write(b"partial garbage")
        raise KeyboardInterrupt  # the process dies during the write

    monkeypatch.setattr(checkpoints.np, "savez", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, x, epochs=2, initial_epoch=1, verbose=0, callbacks=[callback])
    assert callback.path.read_bytes() == saved  # the latest checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["latest.npz"]  # no temporary left
    monkeypatch.undo()

    # and it restores the weights and the optimizer state into a fresh model
    fresh = RNNLanguageModel(20, units=8, embedding_dim=8, num_layers=1)
    fresh.build((None, None))  # restoring needs the variables to exist
    compile_language_model(fresh, "adam", 0.01, jit_compile=False)
    restore = ResumableCheckpoint(tmp_path)
    fresh.fit(x, x, epochs=1, verbose=0, callbacks=[restore])  # 1 epoch done: nothing to run
    assert restore.restored_epoch == 1
    reloaded = ResumableCheckpoint(tmp_path)
    with np.load(reloaded.path) as data:
        np.testing.assert_array_equal(data["v0"], keras.ops.convert_to_numpy(fresh.variables[0]))
    assert int(fresh.optimizer.iterations.numpy()) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "jit_compile, mode, optimizer",
    [
        (False, "sentence", "sgd"),
        ("auto", "sentence", "sgd"),
        ("auto", "stream", "sgd"),
        ("auto", "sentence", "adam"),
    ],
    ids=["reference-sentence", "fast-sentence", "fast-stream", "fast-sentence-adam"],
)
def test_same_seed_same_loss_curve(tmp_path, monkeypatch, jit_compile, mode, optimizer):
    """Same --seed, same loss curve: the reference path and the fast default path
    (XLA time loop in row parts, hand-written backward, fused output layer, fused SGD or
    Adam) with dropout on."""
    from keras_rnnlm.fast import train_step as fast_dispatch

    _corpus(tmp_path)
    fused_steps = []  # the fused step returns logs (not None) when the fast path trains
    original = fast_dispatch.fused_train_step

    def spy(model, data):
        logs = original(model, data)
        fused_steps.append(logs is not None)
        return logs

    monkeypatch.setattr(fast_dispatch, "fused_train_step", spy)

    def run(name):
        config = TrainConfig(
            train_file=str(tmp_path / "train.txt"),
            units=16,
            embedding_dim=8,
            dropout=0.2,
            epochs=2,
            seed=3,
            mode=mode,
            optimizer=optimizer,
            learning_rate=1.0 if optimizer == "sgd" else 0.01,
            jit_compile=jit_compile,
            verbose=0,
            output=str(tmp_path / name),
        )
        return train(config)

    first, second = run("a"), run("b")
    assert first["history"]["loss"] == second["history"]["loss"]
    assert first["history"]["loss"][1] < first["history"]["loss"][0]
    assert fused_steps and all(fused_steps) == (jit_compile == "auto"), fused_steps


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomically_written_files_follow_the_umask(tmp_path, umask, mode):
    # mkstemp creates 0600 files; a rename keeps the mode, so a run would be unreadable to a
    # serving container or another user
    from keras_rnnlm.checkpoints import atomic_save_model, atomic_write_text
    from keras_rnnlm.models import RNNLanguageModel
    from keras_rnnlm.training import compile_language_model

    model = RNNLanguageModel(20, units=4, embedding_dim=4, num_layers=1)
    model.build((None, None))
    compile_language_model(model, "sgd", 0.1, jit_compile=False)
    x = np.random.default_rng(0).integers(1, 20, (4, 5)).astype("int32")
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.json", "{}")
        atomic_save_model(model, tmp_path / "model.keras")
        model.fit(x, x, epochs=1, verbose=0, callbacks=[ResumableCheckpoint(tmp_path / "backup")])
    finally:
        os.umask(previous)
    for path in (
        tmp_path / "config.json",
        tmp_path / "model.keras",
        tmp_path / "backup" / "latest.npz",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup", "config.json", "model.keras"]
