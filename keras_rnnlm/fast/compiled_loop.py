"""The generic fast time loop: any cell's reference loop XLA-compiled, forward and gradient.

For cells without a hand-written backward rule (``fast.cell_backward``; the GRU, subclasses):
``fast.time_loop.fast_time_loop`` runs ``compiled_time_loop`` per row part. The reference is
``keras_rnnlm.layers.Recurrent._time_loop``; ``tests/layers_test.py`` checks the loop and its
gradients against it. The compiled functions are cached on the layer (untracked, never saved).
"""

import keras
import tensorflow as tf


def _flag(value, dtype=tf.bool):
    """``(value or a placeholder scalar, whether it was given)``: XLA functions need tensors."""
    if value is None:
        return tf.zeros((), dtype), False
    return tf.cast(value, dtype), True


def _pure_time_loop(layer, projected, mask, states, weights, reset=None):
    """``_time_loop`` with the cell's weights given as tensors (a pure function)."""
    mapping = list(zip(layer.cell.trainable_weights, weights))
    with keras.StatelessScope(state_mapping=mapping):
        return layer._time_loop(projected, mask, states, reset)


def _xla_functions(layer):
    functions = layer.__dict__.get("_xla_loop_functions")
    if functions is not None:
        return functions

    def forward(projected, mask, reset, states, weights, has_mask, has_reset):
        return _pure_time_loop(
            layer,
            projected,
            mask if has_mask else None,
            states,
            weights,
            reset if has_reset else None,
        )

    def backward(projected, mask, reset, states, weights, has_mask, has_reset, upstream):
        # recompute the forward inside the same XLA computation: the while loop's saved
        # intermediates (TensorLists) cannot be outputs of an XLA function
        with tf.GradientTape() as tape:
            tape.watch([projected, states, weights])
            outputs, last, final = forward(
                projected, mask, reset, states, weights, has_mask, has_reset
            )
        return tape.gradient(
            [outputs, last, *final],
            [projected, states, weights],
            output_gradients=upstream,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )

    functions = (
        tf.function(forward, jit_compile=True),
        tf.function(backward, jit_compile=True),
    )
    object.__setattr__(layer, "_xla_loop_functions", functions)  # untracked: never saved
    return functions


def compiled_time_loop(layer, projected, mask, states, reset=None):
    """``_time_loop`` as one XLA computation, and its gradient as another (``jit_time_loop``).

    TensorFlow cannot differentiate an XLA function holding a while loop through its
    saved intermediates, so the gradient recomputes the loop's forward pass (one extra
    recurrence forward, inside the compiled backward computation).
    """
    forward, backward = _xla_functions(layer)
    mask, has_mask = _flag(mask)
    reset, has_reset = _flag(reset)
    weights = [tf.convert_to_tensor(w) for w in layer.cell.trainable_weights]
    num_states = len(states)

    @tf.custom_gradient
    def loop(projected, mask, *flat):
        states, weights = list(flat[:num_states]), list(flat[num_states:])
        outputs, last, final = forward(  # stop_gradient: see fast.time_loop.explicit_time_loop
            *tf.nest.map_structure(tf.stop_gradient, (projected, mask, reset, states, weights)),
            has_mask,
            has_reset,
        )
        results = [outputs, last, *final]

        def grad(*upstream):
            upstream = [tf.zeros_like(r) if u is None else u for u, r in zip(upstream, results)]
            d_projected, d_states, d_weights = backward(
                projected, mask, reset, states, weights, has_mask, has_reset, upstream
            )
            return [d_projected, None, *d_states, *d_weights]

        return results, grad

    outputs, last, *final = loop(projected, mask, *states, *weights)
    return outputs, last, list(final)
