"""``keras-rnnlm train --tensorboard DIR``: the event files read back match metrics.json, the
steps follow ``optimizer.iterations`` across a resume, and the flag is no configuration change."""

import json

import keras
import numpy as np
import pytest

from keras_rnnlm.runs import TrainConfig, TrainingCrashedError, train
from keras_rnnlm.summaries import STEP_TAGS, read_scalars
from keras_rnnlm.training import EpochDecay

pytest.importorskip("tensorboard")

LINES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog met on the mat"]


class _Interrupt(Exception):
    pass


class _StopBeforeEpoch(keras.callbacks.Callback):
    """Simulate a kill between epochs (the checkpoint of the previous epoch is on disk)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Interrupt


def _config(tmp_path, **changes):
    rng = np.random.default_rng(0)
    words = " ".join(LINES).split()
    lines = [" ".join(rng.choice(words, rng.integers(3, 10))) for _ in range(120)]
    (tmp_path / "train.txt").write_text("\n".join(lines[:100]) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(lines[100:]) + "\n")
    values = dict(
        train_file=str(tmp_path / "train.txt"),
        valid_file=str(tmp_path / "valid.txt"),
        mode="stream",  # equal batches without padding: a step's loss weighs the same
        num_layers=1,
        units=12,
        embedding_dim=8,
        batch_size=4,
        num_steps=8,
        epochs=3,
        optimizer="adam",
        learning_rate=0.01,
        clip_norm=0.3,  # the norms here run from about 0.2 to 0.4: some steps clip
        decay_start_epoch=1,
        decay_factor=2.0,
        jit_compile=False,
        verbose=0,
        output=str(tmp_path / "run"),
    )
    return TrainConfig(**{**values, **changes})


def _latest(events):
    """{step: value}, the last write of each step winning (as TensorBoard shows a rerun)."""
    return {step: value for step, value, _ in events}


def test_tensorboard_events_match_metrics_json_across_a_resume(tmp_path):
    # epoch 0 done without the flag, killed before epoch 1 (train reports the crash, and its
    # cause, as TrainingCrashedError)
    with pytest.raises(TrainingCrashedError) as crashed:
        train(_config(tmp_path), callbacks=[_StopBeforeEpoch(1)])
    assert isinstance(crashed.value.__cause__, _Interrupt)
    log_dir = tmp_path / "tb"
    metrics = train(_config(tmp_path, tensorboard=str(log_dir)))  # resumed, flag added
    assert metrics["resumed_at_epoch"] == 1
    history = metrics["history"]
    assert history == json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]

    scalars = read_scalars(log_dir)
    assert set(STEP_TAGS) <= set(scalars)
    steps = sorted(_latest(scalars["loss"]))
    per_epoch = len(steps) // 2
    assert per_epoch > 1 and len(steps) == 2 * per_epoch
    # optimizer.iterations continues where epoch 0 stopped: steps per_epoch+1 .. 3*per_epoch
    assert steps == list(range(per_epoch + 1, 3 * per_epoch + 1))
    loss, perplexity, lr, norm, clipped = (
        np.array([_latest(scalars[tag])[s] for s in steps]) for tag in STEP_TAGS
    )
    for epoch in (1, 2):
        part = slice((epoch - 1) * per_epoch, epoch * per_epoch)
        # the epoch-to-date perplexity at the epoch's last step is metrics.json's
        np.testing.assert_allclose(perplexity[part][-1], history["perplexity"][epoch], rtol=1e-5)
        # per-step losses average to the epoch loss; equal token counts per step, so the
        # epoch-to-date perplexity is exp(mean of the step losses so far) at every step
        np.testing.assert_allclose(loss[part].mean(), history["loss"][epoch], rtol=1e-4)
        running = np.exp(np.cumsum(loss[part]) / np.arange(1, per_epoch + 1))
        np.testing.assert_allclose(perplexity[part], running, rtol=1e-4)
        np.testing.assert_allclose(lr[part], EpochDecay(0.01, 1, 2.0)(epoch), rtol=1e-6)
    assert np.all(norm > 0) and np.all(np.isfinite(norm))
    np.testing.assert_array_equal(clipped, (norm > 0.3).astype(float))
    assert 0 < clipped.sum() < len(clipped)  # the threshold was crossed at least once
    epoch_perplexity = _latest(scalars["epoch/perplexity"])
    assert epoch_perplexity == pytest.approx(
        {per_epoch * 2: history["perplexity"][1], per_epoch * 3: history["perplexity"][2]},
        rel=1e-6,
    )
