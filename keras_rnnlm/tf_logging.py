"""Quiet TensorFlow: its C++ log lines hidden from a process that has not imported it yet.

On a machine without a GPU every TensorFlow process prints lines such as
``E0000 ... failed call to cuInit: INTERNAL: CUDA error`` and
``I0000 ... cudart_stub.cc ... Could not find cuda drivers``. ``TF_CPP_MIN_LOG_LEVEL`` must be
set *before* TensorFlow is imported, level 2 still shows E-lines, and the lines absl writes
while TensorFlow's shared libraries load ignore it altogether. ``configure_tensorflow_logging``
handles the three; ``keras-rnnlm`` calls it before running any command.

Example:

>>> from keras_rnnlm.tf_logging import configure_tensorflow_logging
>>> configure_tensorflow_logging()  # before anything imports TensorFlow
>>> import tensorflow as tf  # already imported, quietly

TensorFlow's *Python* logger is a separate matter: in an interactive session (IPython, Jupyter)
TensorFlow sets it to INFO with a handler on stdout, so every ``tf.saved_model.save`` prints
``INFO:tensorflow:Assets written to: ...``. ``tensorflow_info_dropped`` keeps such progress
lines of the library's own TensorFlow calls (the exports) out of the user's output; warnings
still pass.
"""

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

#: a line of TensorFlow's C++ (absl) logging: severity letter, MMDD, space
TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ log lines dropped from stderr.

    ``TF_CPP_MIN_LOG_LEVEL`` does not reach the lines absl writes while TensorFlow's shared
    libraries load (``cudart_stub.cc ... Could not find cuda drivers``): they are printed
    before absl's logging is initialized. File descriptor 2 is redirected to a temporary file
    during the import; what was written there is copied back to stderr without those lines,
    so a Python warning or error raised by the import still shows.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            kept = [
                line
                for line in lines
                if not (TF_LOG_LINE.match(line) or line.startswith(_ABSL_PREAMBLE))
            ]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def configure_tensorflow_logging(show: bool = False) -> None:
    """Silence TensorFlow's C++ logging for this process (before TensorFlow is imported).

    Args:
        show: keep TensorFlow's own logging (``--tf-logs``). A ``TF_CPP_MIN_LOG_LEVEL`` set in
            the environment is also left alone: the user chose a level.
    """
    if show or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # also hides E-lines such as cuInit's
    import_tensorflow_quietly()


class _BelowWarning(logging.Filter):
    """Rejects records below WARNING (a logger filter: the record is neither handled nor
    propagated to the parent loggers' handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextlib.contextmanager
def tensorflow_info_dropped() -> Iterator[None]:
    """Drop the INFO (and DEBUG) records of TensorFlow's Python logger inside the block.

    For the library's own calls into TensorFlow that log progress at INFO, such as
    ``tf.saved_model.save`` (``Assets written to: ...``, printed in every Jupyter session,
    where TensorFlow sets its logger to INFO). WARNING and above still pass; the logger's level
    is not changed and the filter is removed when the block ends, so records logged after it,
    or by other loggers, are untouched.

    Example:

    >>> with tensorflow_info_dropped():
    ...     tf.saved_model.save(module, export_dir)  # no "INFO:tensorflow:Assets written"
    """
    logger = logging.getLogger("tensorflow")
    drop = _BelowWarning()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def save_saved_model(obj, export_dir, **kwargs) -> None:
    """``tf.saved_model.save(obj, export_dir, **kwargs)`` inside ``tensorflow_info_dropped``:
    the library's exports print no ``INFO:tensorflow:Assets written to`` line in Jupyter.

    Example:

    >>> save_saved_model(module, export_dir, signatures={"serving_default": module.serve})
    """
    import tensorflow as tf

    with tensorflow_info_dropped():
        tf.saved_model.save(obj, str(export_dir), **kwargs)
