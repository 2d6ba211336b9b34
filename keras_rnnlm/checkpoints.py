"""Resumable training: an atomic checkpoint after every epoch, restored when the run restarts.

A training run killed at any moment (``kill -9`` included) resumes from its last completed
epoch when the same command runs again, and ends with the same weights and metrics as an
uninterrupted run of the same seed. What is saved, in one ``.npz`` file:

* every model variable (weights, non-trainable state, and the dropout layers' random-seed
  states, which ``model.save_weights`` leaves out);
* every optimizer variable (iteration count, learning rate, Adam moments);
* the number of completed epochs and the ``History`` so far.

The learning-rate schedule is a function of the epoch (``EpochDecay``), so it resumes with the
epoch. Data order must be a function of the epoch too: ``keras_rnnlm.data.pipelines``'s
``sentence_epochs`` shuffles epoch ``e`` with the seed ``(seed, e)``; stream batches are
never shuffled.

The file is written to a temporary name in the same directory, flushed to disk, then renamed
over the previous checkpoint (``os.replace`` is atomic on POSIX): a kill during a write leaves
the previous checkpoint intact.

Example (your own ``model.fit``):

>>> checkpoint = ResumableCheckpoint("run/backup")
>>> first_epoch = checkpoint.completed_epochs()  # build epoch-dependent data from here
>>> model.fit(data, epochs=10, callbacks=[checkpoint])  # resumes at ``first_epoch``
"""

import contextlib
import json
import os
import tempfile
from pathlib import Path

import keras
import numpy as np

from keras_rnnlm.compat import set_initial_epoch

CHECKPOINT_FILE = "latest.npz"


class CheckpointMismatchError(ValueError):
    """The checkpoint to resume from belongs to another model or optimizer."""


class ResumableCheckpoint(keras.callbacks.Callback):
    """Save the full training state atomically at every epoch end; restore it at train begin.

    Args:
        directory: where ``latest.npz`` is written (created if missing).
        delete_on_success: remove the checkpoint when ``fit`` completes all its epochs
            (the run's final files then hold the result).
        restore_directory: where the checkpoint to resume from is read (default
            ``directory``). A multi-worker run's non-chief workers write to a temporary
            directory and restore from the chief's, as every worker must resume alike.

    The model must be built (``model.build``) before ``fit`` so that its variables exist
    when the checkpoint is restored. An epoch whose weights are not all finite (a diverged run) is not saved, so the last good
    checkpoint survives.
    """

    def __init__(self, directory, delete_on_success: bool = False, restore_directory=None):
        super().__init__()
        self.directory = Path(directory)
        self.restore_directory = Path(restore_directory or directory)
        self.delete_on_success = delete_on_success
        self.restored_epoch = 0
        self.saved_epoch = 0  # epochs completed in the checkpoint on disk
        self.history: dict[str, list[float]] = {}

    @property
    def path(self) -> Path:
        return self.directory / CHECKPOINT_FILE

    @property
    def restore_path(self) -> Path:
        return self.restore_directory / CHECKPOINT_FILE

    def completed_epochs(self) -> int:
        """Epochs completed by the saved run (0 when there is no checkpoint)."""
        if not self.restore_path.exists():
            return 0
        with np.load(self.restore_path) as data:
            return int(json.loads(str(data["meta"]))["epoch"])

    def _variables(self):
        optimizer = self.model.optimizer
        if not optimizer.built:  # Keras builds it at the first update; restoring needs it now
            optimizer.build(self.model.trainable_variables)
        return list(self.model.variables) + list(self.model.optimizer.variables)

    def on_train_begin(self, logs=None):
        self._target_epochs = self.params.get("epochs")
        if not self.restore_path.exists():
            return
        variables = self._variables()
        with np.load(self.restore_path) as data:
            meta = json.loads(str(data["meta"]))
            if meta["num_variables"] != len(variables):
                raise CheckpointMismatchError(
                    f"The checkpoint {self.restore_path} holds {meta['num_variables']} variables but this "
                    f"model and optimizer have {len(variables)}: it belongs to another "
                    "configuration. Delete it or train into another directory."
                )
            for i, variable in enumerate(variables):
                value = data[f"v{i}"]
                if tuple(value.shape) != tuple(variable.shape):
                    raise CheckpointMismatchError(
                        f"The checkpoint {self.restore_path} does not match this model: variable "
                        f"{variable.path} has shape {tuple(variable.shape)}, saved "
                        f"{tuple(value.shape)}."
                    )
                variable.assign(value)
        self.restored_epoch = self.saved_epoch = meta["epoch"]
        self.history = meta["history"]
        set_initial_epoch(self.model, self.restored_epoch)

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        values = [np.asarray(keras.ops.convert_to_numpy(v)) for v in self._variables()]
        if not all(np.isfinite(v).all() for v in values if v.dtype.kind == "f"):
            return  # diverged: keep the last good checkpoint
        meta = {
            "epoch": epoch + 1,
            "num_variables": len(values),
            "history": self.history,
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        arrays = {f"v{i}": value for i, value in enumerate(values)}
        _atomic_savez(self.path, meta=np.asarray(json.dumps(meta)), **arrays)
        self.saved_epoch = epoch + 1

    def on_train_end(self, logs=None):
        finished = self._target_epochs is not None and self.saved_epoch >= self._target_epochs
        if self.delete_on_success and finished and not self.model.stop_training:
            self.path.unlink(missing_ok=True)
            if not any(self.directory.iterdir()):
                self.directory.rmdir()


def _current_umask() -> int:
    """The process's file-creation mask (``os.umask`` can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _replacing(path, suffix: str):
    """A temporary file beside ``path``, renamed over ``path`` when the block succeeds (atomic
    on POSIX) and removed when it fails: ``path`` is never left half-written.

    ``tempfile.mkstemp`` creates the file with mode 0600, which the rename would keep; before
    the rename it gets the mode of a file created by ``open``: ``0o666 & ~umask`` (0644 under
    the usual umask 022), so that other users and serving containers can read the run."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=suffix)
    os.close(descriptor)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _atomic_savez(path: Path, **arrays) -> None:
    """``np.savez`` to ``path`` atomically, flushed to disk before the rename."""
    with _replacing(path, ".npz") as temporary:
        with open(temporary, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())


def atomic_save_model(model: keras.Model, path) -> None:
    """``model.save(path)`` through a temporary file and an atomic rename."""
    with _replacing(path, ".keras") as temporary:
        model.save(temporary)


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    with _replacing(path, ".txt") as temporary:
        Path(temporary).write_text(text, encoding="utf-8")
