"""Every private Keras hook the package uses, in one place.

Keras 3 has no public API for these; each is pinned by a canary test
(``tests/compat_test.py``) that fails loudly if Keras renames a hook or stops calling it.

Optimizer hooks (``OptimizerHooks``, a mixin placed before a Keras optimizer class):

* ``_clip_gradients(grads)``: Keras's per-replica clipping inside ``apply``; routed to
  ``clip_gradients_per_replica``.
* ``_all_reduce_sum_gradients(grads_and_vars)``: the cross-replica sum; what it returns goes
  through ``after_cross_replica_sum``.
* ``_backend_update_step(grads, variables, learning_rate)``: the update of all variables;
  ``fused_update_step`` may take it over (return True).

``adam_moments(optimizer, variable)``: a Keras Adam's first and second moment variables of
``variable`` (``_momentums``/``_velocities`` at ``_get_variable_index``), for the fused update.

Model hooks: ``update_loss_tracker`` (``model._loss_tracker``), ``build_compiled_metrics``
(``model._compile_metrics.build``), ``set_compile_config_value``
(``model._compile_config.config``), ``compile_from_config`` (a copy of Keras's
``Model.compile_from_config``, which Keras skips for models that override ``compile``),
``set_initial_epoch`` (``model._initial_epoch``, read by ``fit`` after ``on_train_begin``),
``wrap_apply_gradients``/``unwrap_apply_gradients`` (an instance attribute shadowing
``optimizer.apply_gradients``).
"""

from collections.abc import Callable

import keras


class OptimizerHooks:
    """Routes a Keras optimizer's private hooks to the public methods below.

    Example:

    >>> class Logged(OptimizerHooks, keras.optimizers.SGD):
    ...     def after_cross_replica_sum(self, grads_and_vars):
    ...         return grads_and_vars
    """

    def _clip_gradients(self, grads):
        return self.clip_gradients_per_replica(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        summed = super()._all_reduce_sum_gradients(grads_and_vars)
        return self.after_cross_replica_sum(list(summed))

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if not self.fused_update_step(grads, trainable_variables, learning_rate):
            super()._backend_update_step(grads, trainable_variables, learning_rate)

    def clip_gradients_per_replica(self, grads):
        """Keras's clipping of one replica's gradients (default: Keras's own)."""
        return keras_clip_gradients(self, grads)

    def after_cross_replica_sum(self, grads_and_vars):
        """The ``(gradient, variable)`` list after the cross-replica sum (default: as is)."""
        return grads_and_vars

    def fused_update_step(self, grads, trainable_variables, learning_rate) -> bool:
        """Apply the update in a faster way and return True, or return False (default)."""
        return False


def keras_clip_gradients(optimizer: OptimizerHooks, grads: list) -> list:
    """Keras's own ``clipnorm``/``global_clipnorm``/``clipvalue`` clipping of ``grads``."""
    return super(OptimizerHooks, optimizer)._clip_gradients(grads)


def adam_moments(optimizer: keras.optimizers.Adam, variable) -> tuple:
    """``(m, v)``: the Adam moment variables Keras keeps for ``variable``."""
    index = optimizer._get_variable_index(variable)
    return optimizer._momentums[index], optimizer._velocities[index]


def update_loss_tracker(model: keras.Model, loss, batch_size) -> None:
    """Add a batch's loss to the ``loss`` Keras logs (what Keras's ``train_step`` does)."""
    model._loss_tracker.update_state(loss, sample_weight=batch_size)


def build_compiled_metrics(model: keras.Model, y) -> None:
    """Build the compiled metrics container once (Keras builds it in ``compute_metrics``)."""
    if not model._compile_metrics.built:  # single output: only the structure counts
        model._compile_metrics.build(y, y)


def set_compile_config_value(model: keras.Model, key: str, value) -> None:
    """Overwrite one ``compile`` argument as saved in ``.keras`` files (``compile_config``)."""
    model._compile_config.config[key] = value


def compile_from_config(model: keras.Model, config: dict) -> None:
    """Keras's ``Model.compile_from_config``: ``compile(**config)``, then build the optimizer
    so that its saved variables can be loaded."""
    model.compile(**keras.saving.deserialize_keras_object(config))
    if hasattr(model, "optimizer") and model.built:
        model.optimizer.build(model.trainable_variables)


def set_initial_epoch(model: keras.Model, epoch: int) -> None:
    """Make a running ``fit`` continue at ``epoch`` (call from ``on_train_begin``)."""
    model._initial_epoch = epoch


def wrap_apply_gradients(
    optimizer: keras.optimizers.Optimizer, wrapper: Callable[[Callable, list], object]
) -> None:
    """Route ``optimizer.apply_gradients(grads_and_vars)`` through ``wrapper(original,
    grads_and_vars)`` for this optimizer instance only (re-trace the train function after).

    Example:

    >>> wrap_apply_gradients(opt, lambda original, gv: original(gv))
    >>> unwrap_apply_gradients(opt)
    """
    original = type(optimizer).apply_gradients.__get__(optimizer)

    def apply_gradients(grads_and_vars, *args, **kwargs):
        return wrapper(lambda gv: original(gv, *args, **kwargs), list(grads_and_vars))

    optimizer.apply_gradients = apply_gradients


def unwrap_apply_gradients(optimizer: keras.optimizers.Optimizer) -> None:
    """Undo ``wrap_apply_gradients`` (no-op when not wrapped)."""
    if "apply_gradients" in vars(optimizer):
        del optimizer.apply_gradients
