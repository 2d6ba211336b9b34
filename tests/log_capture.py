"""Shared by generation_test.py and gradients_test.py: what TensorFlow's Python logger says."""

import contextlib
import logging

import tensorflow as tf


@contextlib.contextmanager
def tensorflow_warnings():
    """Collect the messages of TensorFlow's logger (its retracing warnings go there).

    Example:

    >>> with tensorflow_warnings() as messages:
    ...     run_something()
    >>> assert not [m for m in messages if "retracing" in m]
    """
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    tf.get_logger().addHandler(handler)
    try:
        yield messages
    finally:
        tf.get_logger().removeHandler(handler)
