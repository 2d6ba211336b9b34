"""Stream mode (truncated BPTT, ``stateful=True``) data-parallel over several replicas.

A stream batch of ``B`` rows continues, row by row, the previous batch: row ``b`` of batch
``i + 1`` is the text that follows row ``b`` of batch ``i`` (``data.pipelines.stream_batches``).
Under a ``tf.distribute`` strategy with ``n`` replicas the design is:

* **Rows, not batches, are sharded.** Replica ``r`` owns the fixed rows
  ``[r * B/n, (r + 1) * B/n)`` of *every* global batch, so the rows it sees continue the rows
  it saw. On one worker, Keras's ``experimental_distribute_dataset`` already splits each
  global batch that way; across workers TensorFlow's default auto-sharding would hand the
  workers alternate *batches* (breaking every row's continuity), so
  ``distribute_stream_dataset`` builds the input with ``distribute_datasets_from_function``:
  each input pipeline produces its replicas' row slices of every batch, in replica order.
* **Per-replica state variables.** Under ``n > 1`` replicas ``Recurrent.build`` creates the
  carried states as ``RowShardedState``s (``replica_state_variables``): a ``tf.Variable``
  with ``synchronization=ON_READ`` of shape ``(B/n, units)``, one copy per replica. In a
  replica a read gives that replica's rows and an ``assign`` writes only them, so the step
  code is the one-device code; outside the replicas (a direct call of the model, an
  evaluation loop) the state reads and writes as the one-device ``(B, units)`` state. The step over ``n`` replicas is the one-device step over the
  whole batch because the loss divides by the *global* token count and the optimizers of
  ``keras_rnnlm.distribute`` clip after the cross-replica sum
  (``tests/distributed_stream_test.py``: 20 clipped steps, SGD and Adam, weights and states
  equal to 1e-5 of one device).
* **Resets.** ``Recurrent.reset_state`` (``ResetStatesCallback``: every epoch start and
  every evaluation) assigns zeros in cross-replica context, which zeros every replica.
* **Checkpoints hold no states, by design.** The layer's saved weights ``state_i`` keep the
  global shape ``(B, units)`` whatever the replicas (zeros under several replicas), so a
  model or checkpoint written on ``n`` replicas loads on one device and vice versa. The live
  per-replica states are not saved: a run resumes at an epoch boundary
  (``keras_rnnlm.checkpoints``), where the states are reset anyway, so saving them would
  change nothing; ``replica_states`` reads them (row order of the global batch).
* **Evaluation** of the stream (``evaluate_stream_perplexity``) runs a stateless copy at
  batch 1 on one device, after training, as on one device.

The train step under several replicas is the reference step without XLA (XLA cannot compile
a step whose variables live on several devices; ``fast.train_step.fast_path_supported``);
``tests/training_test.py`` tests it equal to the fast path. On a TPU the step compiles with
``jit_compile=True`` and static shapes (``tests/tpu_readiness_test.py`` inspects its HLO).

Example:

>>> strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
>>> with strategy.scope():
...     model = RNNLanguageModel(100, stateful=True)
...     model.build((20, None))  # the global batch: 10 rows per replica
>>> data = distribute_stream_dataset(strategy, inputs, targets)
>>> model.fit(data, ...)
"""

import numpy as np
import tensorflow as tf

from keras_rnnlm.distribute import dense_duplicate_rows_sum  # noqa: F401  (re-exported)


def _strategy_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def check_stream_batch(batch_size: int, replicas: int) -> int:
    """The rows each replica owns: ``batch_size // replicas``.

    Args:
        batch_size: the global batch (rows of the stream).
        replicas: replicas in sync.

    Returns:
        The per-replica batch.

    Raises:
        ValueError: ``batch_size`` is not a positive multiple of ``replicas``.

    Example:

    >>> check_stream_batch(20, 2)
    10
    """
    if replicas < 1 or batch_size < replicas or batch_size % replicas:
        raise ValueError(
            f"Stream mode splits the batch's rows between the replicas: --batch-size "
            f"{batch_size} is not a multiple of the {replicas} replicas."
        )
    return batch_size // replicas


def _in_replica(replicas: int) -> bool:
    """Whether the caller runs inside one of ``replicas`` > 1 replicas (``strategy.run``)."""
    context = tf.distribute.get_replica_context()
    return context is not None and context.num_replicas_in_sync > 1 and replicas > 1


def global_state_batch(batch: int) -> int:
    """The global batch of a stateful layer built with ``batch`` rows here: ``batch`` in
    cross-replica context (or one replica), ``batch * replicas`` inside a replica."""
    replicas = _strategy_replicas()
    return batch * replicas if _in_replica(replicas) else batch


class RowShardedState:
    """One carried state ``(B, size)`` of a stateful layer, its rows split over the replicas.

    Holds a ``tf.Variable`` with ``synchronization=ON_READ`` of shape ``(B/n, size)``: one
    independent copy per replica. Inside a replica (``strategy.run``: the train, test and
    predict steps) reading gives, and ``assign`` writes, that replica's rows only. Outside
    (cross-replica context: a direct call of the model, an evaluation loop) it behaves as the
    one-device state: reading concatenates the replicas' rows in replica order (the batch
    dimension left unknown to shape inference) and ``assign`` splits a ``(B, size)`` value
    between them. Converts to a tensor wherever a variable would (``__tf_tensor__``).

    Args:
        rows: rows per replica ``B/n``.
        size: the state's size.
        dtype: its dtype.
        name: the variable's name.
    """

    def __init__(self, rows: int, size: int, dtype="float32", name: str = "replica_state"):
        self.strategy = tf.distribute.get_strategy()
        self.rows, self.size = rows, size
        self.variable = tf.Variable(
            tf.zeros((rows, size), dtype),
            trainable=False,
            name=name,
            synchronization=tf.VariableSynchronization.ON_READ,
            # a cross-replica read of the variable itself (Keras's symbolic build) sees one
            # replica's rows; this class's cross-replica reads concatenate them all
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def shape(self) -> tf.TensorShape:
        """The global shape ``(B, size)`` (this worker's rows under several workers)."""
        return tf.TensorShape((self.rows * len(self.parts()), self.size))

    @property
    def dtype(self) -> tf.DType:
        return self.variable.dtype

    def parts(self) -> tuple:
        """The per-replica variables of this worker, in replica order."""
        return self.strategy.experimental_local_results(self.variable)

    def value(self) -> tf.Tensor:
        """The replica's rows inside a replica, else all rows ``(None, size)``."""
        if _in_replica(self.replicas):
            return tf.convert_to_tensor(self.variable)
        whole = tf.concat([tf.convert_to_tensor(part) for part in self.parts()], axis=0)
        return tf.compat.v1.placeholder_with_default(whole, [None, self.size])

    def assign(self, value) -> None:
        """Write the replica's rows inside a replica, else split ``value`` between them."""
        if _in_replica(self.replicas):
            self.variable.assign(value)
            return
        value = tf.convert_to_tensor(value, self.dtype)
        for i, part in enumerate(self.parts()):
            with tf.device(part.device):
                part.assign(value[i * self.rows : (i + 1) * self.rows])

    def numpy(self) -> np.ndarray:
        """All rows, in the global batch's order."""
        return np.concatenate([np.asarray(part.numpy()) for part in self.parts()])

    def __tf_tensor__(self, dtype=None, name=None):
        value = self.value()
        return value if dtype is None else tf.cast(value, dtype)


def replica_state_variables(batch: int, sizes: list[int], name: str, dtype="float32"):
    """The carried states of a stateful layer under several replicas, or None on one.

    Args:
        batch: the layer's build batch (global in cross-replica context, per replica inside).
        sizes: the sizes of the layer's states.
        name: prefix of the variables' names.
        dtype: the states' dtype.

    Returns:
        None under one replica; else one ``RowShardedState`` per state (``B/n`` rows per
        replica, see the module docstring).

    Raises:
        ValueError: the global batch is not a multiple of the replicas.
    """
    replicas = _strategy_replicas()
    if replicas == 1:
        return None
    rows = check_stream_batch(global_state_batch(batch), replicas)
    return [
        RowShardedState(rows, size, dtype, f"{name}_replica_state_{i}")
        for i, size in enumerate(sizes)
    ]


def replica_states(model) -> list[list[np.ndarray]]:
    """A stateful model's carried states, per layer and state, as ``(B, units)`` arrays in
    the global batch's row order (the replicas' rows concatenated; one device: as is).

    Args:
        model: a stateful ``RNNLanguageModel`` (or anything with ``rnn.rnn_layers``).

    Returns:
        For every recurrent layer, the list of its states.
    """
    return [
        [np.asarray(tf.convert_to_tensor(v).numpy()) for v in layer.state_variables]
        for layer in model.rnn.rnn_layers
    ]


def stream_dataset_fn(inputs: np.ndarray, targets: np.ndarray, repeat: bool = False):
    """A ``dataset_fn`` for ``strategy.distribute_datasets_from_function``: each input
    pipeline yields, batch after batch, the row slice of each of its replicas.

    Args:
        inputs: int ``(num_batches, B, num_steps)`` (``data.pipelines.stream_batches``).
        targets: the same shape.
        repeat: repeat the stream forever (``steps_per_epoch`` slices).

    Returns:
        ``dataset_fn(input_context) -> tf.data.Dataset`` of ``(B/n, num_steps)`` pairs.
    """
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    if inputs.ndim != 3 or inputs.shape != targets.shape:
        raise ValueError(
            "inputs and targets must both be (num_batches, batch, num_steps), got "
            f"{inputs.shape} and {targets.shape}."
        )

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        replicas = input_context.num_replicas_in_sync
        pipelines = input_context.num_input_pipelines
        rows = check_stream_batch(inputs.shape[1], replicas)
        local = replicas // pipelines  # replicas fed by this pipeline, in order
        first = input_context.input_pipeline_id * local

        def mine(array):  # (batches, B, T) -> (batches * local, rows, T), replica-major
            split = array.reshape(array.shape[0], replicas, rows, array.shape[2])
            part = split[:, first : first + local]
            return np.ascontiguousarray(part.reshape(-1, rows, array.shape[2]))

        dataset = tf.data.Dataset.from_tensor_slices((mine(inputs), mine(targets)))
        return (dataset.repeat() if repeat else dataset).prefetch(tf.data.AUTOTUNE)

    return dataset_fn


def distribute_stream_dataset(
    strategy: tf.distribute.Strategy,
    inputs: np.ndarray,
    targets: np.ndarray,
    repeat: bool = False,
    skip_batches: int = 0,
):
    """The stream's batches for ``model.fit`` under ``strategy``, sharded by rows.

    Args:
        strategy: the training strategy.
        inputs: int ``(num_batches, B, num_steps)`` with ``B`` the global batch.
        targets: the same shape.
        repeat: repeat the stream forever (``steps_per_epoch`` slices).
        skip_batches: global batches to skip first (resuming a repeated stream).

    Returns:
        A ``tf.distribute.DistributedDataset`` (the plain ``tf.data.Dataset`` of global
        batches under one replica).

    Example:

    >>> data = distribute_stream_dataset(strategy, *stream_batches(stream, 20, 35))
    """
    inputs, targets = np.asarray(inputs), np.asarray(targets)
    if repeat and skip_batches:  # the stream repeats: skipping whole passes changes nothing
        order = np.roll(np.arange(len(inputs)), -(skip_batches % len(inputs)))
        inputs, targets = inputs[order], targets[order]
    elif skip_batches:
        inputs, targets = inputs[skip_batches:], targets[skip_batches:]
    if strategy.num_replicas_in_sync == 1:
        dataset = tf.data.Dataset.from_tensor_slices((inputs, targets))
        return (dataset.repeat() if repeat else dataset).prefetch(tf.data.AUTOTUNE)
    return strategy.distribute_datasets_from_function(stream_dataset_fn(inputs, targets, repeat))


def single_device_copy(model):
    """A one-device copy of a stateful model trained under a strategy: same weights, same
    global batch, states zero (the copy's own, tracked as on one device).

    Call it outside ``strategy.scope()``. For evaluation loops that call the model on the
    global batch outside the replicas on several workers, where a worker's
    ``RowShardedState`` holds only its own replicas' rows.

    Args:
        model: a built stateful ``RNNLanguageModel``.

    Returns:
        The copy, built for the global batch.

    Example:

    >>> evaluate_perplexity(single_device_copy(model), stream_dataset(valid, 20, 35))
    """
    if not getattr(model, "stateful", False):
        raise ValueError("single_device_copy copies a stateful model; this one is not.")
    if tf.distribute.has_strategy():
        raise ValueError("Call single_device_copy outside strategy.scope().")
    batch = int(model.rnn.rnn_layers[0].non_trainable_weights[0].shape[0])  # a state (B, units)
    copy = type(model).from_config(model.get_config())
    copy.build((batch, None))
    trained = {v.path: v for v in model.weights}
    for variable in copy.weights:
        variable.assign(tf.convert_to_tensor(trained[variable.path]))
    return copy
