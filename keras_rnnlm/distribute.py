"""Training on several devices: strategy selection and exact global-norm clipping across replicas.

Keras 3 clips gradients inside each replica, *before* the cross-replica sum (``optimizer.apply``
clips, then ``_backend_update_step`` all-reduces). With ``n`` replicas every replica's gradient
may reach the limit, so the summed update can reach ``n`` times the clip norm: the lecture's
clipping ("if ``||g|| > threshold``, rescale ``g``") is silently wrong. The optimizers here clip
*after* the sum, so a step on ``n`` replicas applies exactly the single-device update of the
same global batch (``tests/distribute_test.py`` checks it to 1e-6 on 2 logical CPU devices).

The loss side matters too: ``keras_rnnlm.losses.MaskedLanguageModelLoss`` divides each replica's
NLL sum by the *global* number of real tokens, so summing replica gradients gives the gradient
of the global-batch mean even when the replicas hold different amounts of padding.

Strategies (``keras-rnnlm train --strategy ...``):

* ``default``: one device (``tf.distribute.get_strategy()``).
* ``mirrored``: ``tf.distribute.MirroredStrategy`` over the local GPUs (without GPUs: the
  logical CPU devices; ``configure_cpu_devices(n)``, i.e. ``--cpu-devices n``, splits the CPU
  into ``n`` of them). Sentence mode only (a stateful stream model keeps one state per row on
  one device). The train step runs without XLA there: XLA cannot compile a step whose
  variables live on several devices.
* ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy``; every worker runs the same
  command with its own ``TF_CONFIG`` environment variable, e.g.
  ``{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker",
  "index": 0}}``. Worker 0 (or the ``chief`` task, if the cluster names one) is the chief
  (``is_chief``): the only one that writes the run's files. The strategy is
  ``MultiWorkerMirroredStrategy`` below (Keras 3's ``fit`` cannot start under TensorFlow's own:
  keras-team/keras#20585).
* ``tpu``: ``tf.distribute.TPUStrategy`` on the TPU found by
  ``tf.distribute.cluster_resolver.TPUClusterResolver`` (``$TPU_NAME``, or a TPU VM's local
  TPU). The from-scratch layers compile with XLA (bounded loops, no string ops), which TPUs
  require; do not use ``use_builtin_layers`` there.
"""

import json
import os

import keras
import tensorflow as tf

from keras_rnnlm.compat import OptimizerHooks, keras_clip_gradients
from keras_rnnlm.fast import adam as fast_adam
from keras_rnnlm.fast import sgd as fast_sgd

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def get_strategy(name: str = "default") -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name`` (one of ``STRATEGIES``)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # every local GPU; without GPUs, every logical CPU device (one unless configured with
        # tf.config.set_logical_device_configuration, as the tests do)
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy multi_worker needs the TF_CONFIG environment variable describing "
                "the cluster and this worker's index (see keras_rnnlm/distribute.py)."
            )
        return MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS
            )
        )
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=os.environ.get("TPU_NAME", "")
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}.")


#: a collective (gradient all-reduce) waiting longer than this for a worker fails the step
#: instead of hanging when a worker dies (the coordination service's heartbeats also do)
COLLECTIVE_TIMEOUT_SECONDS = 60.0


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``tf.distribute.MultiWorkerMirroredStrategy`` whose ``reduce`` accepts a nest of values.

    Keras 3's ``fit``/``evaluate`` start by reducing the first distributed batch, an ``(x, y)``
    tuple, with one ``strategy.reduce`` call (to learn its shapes). TensorFlow's strategy
    reduces one value at a time ("TODO: support `value` being a nest" in ``reduce``); on one
    machine the tuple passes through untouched, across workers it fails with "Attempt to
    convert a value (PerReplica...) with an unsupported type" (keras-team/keras#20585). Here
    each element of a nest is reduced on its own: every worker calls it identically, so the
    collectives match. Keras then averages each step's metric results with
    ``reduce("MEAN", value, axis=0)``, which fails on the per-replica scalars ("Invalid
    reduction dimension 0 for input with 0 dimensions"); a scalar has one element per replica,
    so ``axis`` is dropped for it (the mean over replicas, as Keras takes on one machine).

    Example:

    >>> # TF_CONFIG='{"cluster": {"worker": ["localhost:20001", "localhost:20002"]},
    >>> #             "task": {"type": "worker", "index": 0}}'
    >>> strategy = MultiWorkerMirroredStrategy()
    """

    def reduce(self, reduce_op, value, axis=None):
        if isinstance(value, (tuple, list, dict)):
            return tf.nest.map_structure(
                lambda v: None if v is None else self.reduce(reduce_op, v, axis), value
            )
        if axis is not None and self.experimental_local_results(value)[0].shape.rank == 0:
            axis = None  # a scalar per replica: one element each, reduced across replicas
        return super().reduce(reduce_op, value, axis)


def configure_cpu_devices(n: int) -> None:
    """Split the CPU into ``n`` logical devices (``n`` replicas for ``mirrored`` without GPUs).

    Must run before TensorFlow initialises its devices (before the first op or device
    listing); calling it again with the same ``n`` does nothing.

    Args:
        n: the number of logical CPU devices, at least 1.

    Raises:
        ValueError: ``n`` < 1, or TensorFlow already initialised a different number of devices.

    Example:

    >>> configure_cpu_devices(2)  # first thing in a fresh process
    >>> get_strategy("mirrored").num_replicas_in_sync
    2
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"cpu_devices must be a positive integer, got {n!r}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError as error:  # "Virtual devices cannot be modified after being initialized"
        present = len(tf.config.list_logical_devices("CPU"))
        if present != n:
            raise ValueError(
                f"cpu_devices={n}: TensorFlow already initialised its devices in this process "
                f"({present} logical CPU device(s)); split the CPU first thing in a fresh "
                "process (keras-rnnlm train --cpu-devices does)."
            ) from error


def _tf_config() -> dict:
    try:
        return json.loads(os.environ.get("TF_CONFIG") or "{}")
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from error


def is_chief() -> bool:
    """Whether this process is the chief of its ``TF_CONFIG`` cluster (always, without one):
    the ``chief`` task, or worker 0 when the cluster has no ``chief`` job."""
    config = _tf_config()
    task = config.get("task") or {}
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    has_chief = bool((config.get("cluster") or {}).get("chief"))
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and not has_chief


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """The machines (processes) ``strategy`` trains on: the cluster's ``chief`` and ``worker``
    tasks for ``multi_worker``, 1 for every other strategy."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def replicas_agree(strategy: tf.distribute.Strategy, value: int) -> bool:
    """Whether every replica of ``strategy`` (on every worker) holds the same ``value``; every
    worker gets the same answer (from the sums of ``value`` and ``value**2``)."""

    def sums():
        return tf.constant([value, value * value], tf.float32)

    per_replica = tf.function(lambda: strategy.run(sums), autograph=False)()
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
    n = strategy.num_replicas_in_sync
    return bool(n * total[1] == total[0] * total[0])


def num_replicas() -> int:
    """Replicas of the current strategy (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def cross_replica_sum(value):
    """``value`` summed over the replicas when called inside a replica of a multi-replica
    strategy; ``value`` itself otherwise."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


class ClipAfterCrossReplicaSum(OptimizerHooks):
    """Optimizer mixin: ``clipnorm``/``global_clipnorm``/``clipvalue`` act on the gradients
    summed over the replicas (the gradient of the global batch), not on each replica's share.

    On one device it changes nothing: the sum over one replica is the gradient itself. The
    global norm counts an ``IndexedSlices`` gradient (an embedding's) with its duplicate rows
    summed, i.e. the norm of the dense gradient. Keras's ``clip_by_global_norm`` squares the
    slices as they come, so every token seen twice in a batch inflates its norm (measured on a
    3-row example: 3.10 instead of 2.81; ``tests/distribute_test.py``). The Keras hooks this
    relies on are in ``keras_rnnlm.compat`` (canary-tested there).
    """

    #: sum an embedding's duplicate rows densely (static shapes, for XLA/TPU steps) instead of
    #: with ``tf.unique`` (sparse, a data-dependent length); ``compile_language_model`` sets it
    #: for ``jit_compile=True``
    static_shapes = False

    def clip_gradients_per_replica(self, grads):
        return grads  # deferred until the gradients are summed over replicas

    def after_cross_replica_sum(self, grads_and_vars):
        present = [i for i, (g, _) in enumerate(grads_and_vars) if g is not None]
        dedup = dense_duplicate_rows_sum if self.static_shapes else sum_duplicate_rows
        grads = [dedup(grads_and_vars[i][0]) for i in present]
        if self.global_clipnorm:
            scale = global_clip_scale(grads, self.global_clipnorm)
            clipped = [scaled_gradient(g, scale) for g in grads]
        else:
            clipped = keras_clip_gradients(self, grads)
        for i, grad in zip(present, clipped, strict=True):
            grads_and_vars[i] = (grad, grads_and_vars[i][1])
        return grads_and_vars


def sum_duplicate_rows(grad):
    """An ``IndexedSlices`` gradient with each row index once (duplicates summed); any other
    gradient unchanged."""
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    rows, position = tf.unique(grad.indices)
    values = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(rows)[0])
    return tf.IndexedSlices(values, rows, grad.dense_shape)


def dense_duplicate_rows_sum(grad):
    """An ``IndexedSlices`` gradient as the dense tensor it stands for (duplicate rows summed),
    with static shapes; any other gradient unchanged.

    For XLA-compiled steps (TPUs): ``sum_duplicate_rows`` keeps the gradient
    sparse with ``tf.unique``, whose output length depends on the data, a dynamic shape in
    the compiled computation (``tests/tpu_readiness_test.py`` finds ``s32[<=20]`` there).

    Args:
        grad: a gradient.

    Returns:
        A dense ``grad.dense_shape`` tensor for ``IndexedSlices``, else ``grad``.
    """
    if not isinstance(grad, tf.IndexedSlices):
        return grad
    rows = grad.dense_shape[0] if grad.dense_shape is not None else None
    static_rows = tf.get_static_value(rows)
    return tf.math.unsorted_segment_sum(
        grad.values, grad.indices, static_rows if static_rows is not None else rows
    )


def scaled_gradient(grad, factor):
    """``grad * factor`` for a dense or ``IndexedSlices`` gradient (kept sparse)."""
    factor = tf.cast(factor, grad.dtype)
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values * factor, grad.indices, grad.dense_shape)
    return grad * factor


def global_clip_scale(grads, clip_norm):
    """``min(1, clip_norm / ||grads||)`` over all gradients (``IndexedSlices`` must have no
    duplicate rows: ``sum_duplicate_rows``); NaN when the norm is not finite, as in Keras."""
    values = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]
    # l2_loss (sum(v**2) / 2) is one Eigen pass per gradient; tensordot(v, v, 1) ran as a
    # 1 x n by n x 1 oneDNN GEMM, 4 ms of a ~50 ms PTB-small step for the output kernel alone
    squares = [2.0 * tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in values]
    norm = tf.sqrt(tf.add_n(squares))
    return clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)


@keras.saving.register_keras_serializable(package="keras_rnnlm")
class SGD(ClipAfterCrossReplicaSum, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` whose clipping is exact across replicas (see the module).

    Plain SGD (no momentum, no per-variable clipping) on one device takes the fast path's
    fused update with the same result (``keras_rnnlm.fast.sgd``): the global-norm clip
    factor folds into the learning rate and an embedding's sparse gradient stays sparse.
    """

    def fused_update_step(self, grads, trainable_variables, learning_rate):
        return fast_sgd.fused_sgd_update(self, grads, trainable_variables, learning_rate)


@keras.saving.register_keras_serializable(package="keras_rnnlm")
class Adam(ClipAfterCrossReplicaSum, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` whose clipping is exact across replicas (see the module).

    On one device (no ``amsgrad``) the update takes the fast path's fused Adam with the same
    result (``keras_rnnlm.fast.adam``): one pass per variable instead of nine.
    """

    def fused_update_step(self, grads, trainable_variables, learning_rate):
        return fast_adam.fused_adam_update(self, grads, trainable_variables, learning_rate)
