"""Stall-free inputs for ``fit``/``evaluate``: the dataset Keras iterates runs without tf.data's autotuner.

Why: ``model.fit`` deletes its iterator after every epoch and every validation pass, and deleting
an iterator whose pipeline has the autotuner on can block until the autotuner thread's next
wake-up (10, 20, 40, ... ms, doubling up to 60 s). Measured here: training epochs stuck at about
3,890 tokens/s on PTB-small shapes (``benchmarks/data_pipeline_stall.py``,
``benchmarks/train_throughput.py``). Keras builds such a pipeline itself for NumPy arrays
(``prefetch(tf.data.AUTOTUNE)`` with default options), and a user's own ``tf.data.Dataset``
usually has one too.

``StallFreeFitMixin`` puts in front of ``keras.Model.fit`` / ``evaluate``:

- a ``tf.data.Dataset`` gets ``options.autotune.enabled = False`` (``with_options``; nothing
  else about it changes: its batches, order and length are the user's);
- NumPy arrays / tensors become the equivalent dataset: the same batches in the same order as
  Keras's own array pipeline when ``shuffle=False`` (tested equal), a full reshuffle every epoch
  when ``shuffle=True`` (like Keras; the order differs from Keras's but follows the global seed),
  the last partial batch kept, ``validation_split`` taking the last fraction as Keras does.
  Cases with more Keras semantics (``class_weight``, ``shuffle="batch"``, ``steps_per_epoch``
  with arrays, generators, ``PyDataset``) are left to Keras unchanged.

Example:

>>> ds = without_autotuner(tf.data.Dataset.range(4).prefetch(tf.data.AUTOTUNE))
>>> ds.options().autotune.enabled
False
"""

import inspect
import math

import keras
import numpy as np
import tensorflow as tf

KERAS_DEFAULT_BATCH_SIZE = 32


def without_autotuner(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` with tf.data's autotuner switched off (its elements unchanged)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _is_array_like(value) -> bool:
    if value is None:
        return True
    if isinstance(value, (np.ndarray, tf.Tensor)):
        return True
    if isinstance(value, (tuple, list)):
        return len(value) > 0 and all(isinstance(v, (np.ndarray, tf.Tensor)) for v in value)
    if isinstance(value, dict):
        return len(value) > 0 and all(
            isinstance(v, (np.ndarray, tf.Tensor)) for v in value.values()
        )
    return False


def _first_dimension(value) -> int:
    if isinstance(value, dict):
        value = next(iter(value.values()))
    if isinstance(value, (tuple, list)):
        value = value[0]
    return int(value.shape[0])


def _take(value, start: int, stop: int | None):
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: v[start:stop] for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(v[start:stop] for v in value)
    return value[start:stop]


def _as_structure(value):
    return tuple(value) if isinstance(value, list) else value


def array_dataset(x, y=None, sample_weight=None, batch_size=None, shuffle=False) -> tf.data.Dataset:
    """Batches of in-memory arrays as Keras's array pipeline gives them, with the autotuner off.

    Args:
        x: a NumPy array or tensor (or a tuple/list/dict of them) of inputs.
        y: targets in the same forms, or ``None``.
        sample_weight: per-sample weights, or ``None``.
        batch_size: samples per batch (Keras's default 32 when ``None``); the last partial
            batch is kept, as Keras does.
        shuffle: reshuffle all samples every epoch (``True``) or keep their order.

    Returns:
        A ``tf.data.Dataset`` of ``x``, ``(x, y)`` or ``(x, y, sample_weight)`` batches.
    """
    batch_size = batch_size or KERAS_DEFAULT_BATCH_SIZE
    parts = [_as_structure(x)]
    if y is not None or sample_weight is not None:
        parts.append(_as_structure(y))
    if sample_weight is not None:
        parts.append(sample_weight)
    elements = parts[0] if len(parts) == 1 else tuple(parts)
    dataset = tf.data.Dataset.from_tensor_slices(elements)
    count = _first_dimension(x)
    if shuffle:
        dataset = dataset.shuffle(count, reshuffle_each_iteration=True)
    # a static batch dimension when every batch is full, as Keras's array pipeline gives (a
    # stateful model builds its state variables from it); nothing is dropped either way
    batched = dataset.batch(batch_size, drop_remainder=count % batch_size == 0)
    return without_autotuner(batched.prefetch(2))


def stall_free_fit_arguments(x, y, kwargs: dict) -> tuple | None:
    """``(x, y, kwargs)`` for ``keras.Model.fit`` with every dataset autotuner-free, or ``None``.

    ``None`` means "leave this call to Keras unchanged" (inputs this module does not convert).
    """
    kwargs = dict(kwargs)
    batch_size = kwargs.get("batch_size")
    if isinstance(x, tf.data.Dataset):
        x = without_autotuner(x)
    elif _is_array_like(x) and x is not None and _is_array_like(y):
        shuffle = kwargs.get("shuffle", True)
        convertible = (
            kwargs.get("class_weight") is None
            and shuffle in (True, False)
            and kwargs.get("steps_per_epoch") is None
        )
        if not convertible:
            return None
        sample_weight = kwargs.pop("sample_weight", None)
        split = kwargs.pop("validation_split", 0.0) or 0.0
        if split and kwargs.get("validation_data") is None:
            count = _first_dimension(x)
            split_at = int(math.floor(count * (1.0 - split)))  # Keras's train_validation_split
            kwargs["validation_data"] = tuple(
                v
                for v in (
                    _take(x, split_at, None),
                    _take(y, split_at, None),
                    _take(sample_weight, split_at, None),
                )
                if v is not None
            )
            x, y, sample_weight = (_take(v, 0, split_at) for v in (x, y, sample_weight))
        x = array_dataset(x, y, sample_weight, batch_size, shuffle)
        y = None
        kwargs["shuffle"] = False  # the dataset shuffles; Keras warns about shuffle=True on one
        kwargs.pop("batch_size", None)
    else:
        return None
    validation = kwargs.get("validation_data")
    if isinstance(validation, tf.data.Dataset):
        kwargs["validation_data"] = without_autotuner(validation)
    elif (
        isinstance(validation, (tuple, list))
        and 2 <= len(validation) <= 3
        and all(_is_array_like(v) for v in validation)
    ):
        batch = kwargs.pop("validation_batch_size", None) or batch_size
        kwargs["validation_data"] = array_dataset(*validation, batch_size=batch)
    return x, y, kwargs


def _bind(method, model, args: tuple, kwargs: dict) -> tuple:
    """``(x, y, other keyword arguments)`` of a ``fit``/``evaluate`` call, positionals included."""
    bound = inspect.signature(method).bind(model, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop("self")
    arguments.update(arguments.pop("kwargs", {}))
    return arguments.pop("x", None), arguments.pop("y", None), arguments


class StallFreeFitMixin:
    """``fit``/``evaluate`` whose datasets run without the autotuner (see the module docstring).

    Put it before ``keras.Model`` in the bases: ``class MyModel(StallFreeFitMixin, keras.Model)``.
    """

    def fit(self, *args, **kwargs):
        x, y, kwargs = _bind(keras.Model.fit, self, args, kwargs)
        converted = stall_free_fit_arguments(x, y, kwargs)
        if converted is not None:
            x, y, kwargs = converted
        return super().fit(x, y, **kwargs)

    def evaluate(self, *args, **kwargs):
        x, y, kwargs = _bind(keras.Model.evaluate, self, args, kwargs)
        if isinstance(x, tf.data.Dataset):
            x = without_autotuner(x)
        elif (
            _is_array_like(x)
            and x is not None
            and _is_array_like(y)
            and kwargs.get("steps") is None
        ):
            x = array_dataset(
                x, y, kwargs.pop("sample_weight", None), kwargs.pop("batch_size", None)
            )
            y = None
        return super().evaluate(x, y, **kwargs)
