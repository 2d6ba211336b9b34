"""The fast time loop: XLA-compiled forward and backward through time.

The reference is ``keras_rnnlm.layers.Recurrent._time_loop`` (a plain ``tf.while_loop`` over
the cell's ``step``, differentiated by TensorFlow). Here the loop runs as its own XLA
computation even when the surrounding train step is a TensorFlow graph:

* ``explicit_time_loop`` (``SimpleRNNCell``, ``LSTMCell``: cells with a backward rule in
  ``fast.cell_backward``): the forward pass saves the per-step gate activations and input
  states, and a hand-written backward-through-time loop (also XLA) uses them; the
  ``recurrent_kernel`` gradient is one matrix product outside the loop.
* ``compiled_time_loop`` (any other cell, ``fast.compiled_loop``): the reference loop
  XLA-compiled, and its gradient recomputes the forward inside the compiled backward
  computation.

Rows in parallel: a batch's rows are independent through time, so on a CPU ``fast_time_loop``
splits them into one part per core (``row_parts``) and runs one compiled loop per part; the
TensorFlow executor launches the parts' XLA computations concurrently. Their per-step dots and
fusions run as tasks on TensorFlow's intra-op pool, where the parts contend (two parts side
by side took 1.5-2x one part's time per step in microbenchmarks; ~75 against ~60 us per step
in a PTB-small training step), yet one loop over all rows was slower still (0.88x of that
step; ``benchmarks/RESULTS.md``, session 13). With
the explicit backward the parts share one gradient: one transpose of the recurrent kernel and
one kernel-gradient product over all rows (one of each per part cost 1.02-1.11x of a training
step, ``benchmarks/RESULTS.md``).

``tests/layers_test.py`` checks both against the reference loop (float32, gradients to 1e-4
relative / 1e-5 absolute; losses to 1e-5) and the hand-written backward against finite
differences (float64). One XLA compilation per input shape; the compiled functions are
cached on the layer (untracked, never saved).

Per-row resets (``reset``, bool ``(batch, time)``, see ``Recurrent.call``) zero a row's states
before a step in both loops; the explicit backward then stops the state gradient there
(the zeroed states do not depend on the earlier ones).
"""

import functools
import os

import tensorflow as tf

from keras_rnnlm.fast.cell_backward import backward_rule
from keras_rnnlm.fast.compiled_loop import _flag, compiled_time_loop

#: fewest batch rows per part when the time loop is split across cores (``row_parts``)
MIN_ROWS_PER_PART = 8
#: most parts (a part per core up to this)
MAX_PARTS = 4


def _steps(time_major):
    """The number of time steps: static when known, else the (XLA compile-time) dynamic one."""
    static = time_major.shape[0]
    return static if static is not None else tf.shape(time_major)[0]


@functools.cache
def _cpu_cores() -> int:
    if tf.config.list_physical_devices("GPU"):
        return 1  # one device runs the loop; no parts
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def row_parts(batch_size) -> int:
    """How many parts of the batch's rows the fast time loop runs concurrently.

    Args:
        batch_size: the static batch size, or None when it is only known at run time.

    Returns:
        One per CPU core (at most ``MAX_PARTS``), fewer when a part would get less than
        ``MIN_ROWS_PER_PART`` rows of a static batch; 1 on a GPU.

    Example:

    >>> row_parts(20)  # 2 on a 2-core CPU
    2
    """
    parts = min(_cpu_cores(), MAX_PARTS)
    if batch_size is not None:
        parts = min(parts, batch_size // MIN_ROWS_PER_PART)
    return max(parts, 1)


def fast_time_loop(layer, projected, mask, states, reset=None, gradient_dtype="float32"):
    """``layer._time_loop`` on the fast path: explicit backward when the cell has a rule,
    the batch's rows split into ``row_parts`` parts run concurrently.

    Args:
        layer: a built ``keras_rnnlm.layers.Recurrent``.
        projected: ``(batch, time, gates * units)``, the cell's ``project_inputs``.
        mask: boolean ``(batch, time)`` or None.
        states: list of ``(batch, units)`` initial states.
        reset: bool ``(batch, time)`` per-row state resets, or None.
        gradient_dtype: operand dtype of the recurrent-kernel gradient product (outside the
            loop; ``"bfloat16"`` in the fast training step where that is fast).

    Returns:
        ``(outputs (batch, time, units), last_output (batch, units), final_states)``, as the
        reference loop.

    Example:

    >>> outputs, last, states = fast_time_loop(layer, projected, None, initial_states)
    """
    parts = row_parts(projected.shape[0])
    if backward_rule(layer.cell) is not None:  # the parts share one backward (see there)
        return explicit_time_loop(layer, projected, mask, states, reset, gradient_dtype, parts)
    sizes = _part_sizes(projected, parts)
    pieces = [
        compiled_time_loop(layer, x, m, list(s), r)
        for x, m, r, *s in zip(
            _split_rows(projected, sizes, parts),
            _split_rows(mask, sizes, parts),
            _split_rows(reset, sizes, parts),
            *[_split_rows(state, sizes, parts) for state in states],
        )
    ]
    return _join_parts(pieces, len(states))


def _part_sizes(batch_major, parts):
    """Rows per part (None for one part): part i gets rows ``[i * batch // parts, (i + 1) *
    batch // parts)``."""
    if parts == 1:
        return None
    batch = tf.shape(batch_major)[0]
    bounds = [batch * i // parts for i in range(parts + 1)]
    return tf.stack([bounds[i + 1] - bounds[i] for i in range(parts)])


def _split_rows(value, sizes, parts):
    """A batch-major tensor's row parts (``[None] * parts`` for None, ``[value]`` for one)."""
    if value is None:
        return [None] * parts
    return [value] if parts == 1 else tf.split(value, sizes, num=parts)


def _join_rows(values):
    """The whole batch from its row parts (``_split_rows`` undone)."""
    return values[0] if len(values) == 1 else tf.concat(values, axis=0)


def _join_parts(pieces, num_states):
    """``(outputs, last, final_states)`` of the whole batch from its parts' results."""
    outputs = _join_rows([piece[0] for piece in pieces])
    last = _join_rows([piece[1] for piece in pieces])
    final = [_join_rows([piece[2][i] for piece in pieces]) for i in range(num_states)]
    return outputs, last, final


def _explicit_xla_functions(layer, rule):
    """Forward saving per-step residuals, and a hand-written backward, both XLA-compiled.

    For cells with a backward rule (``rule``: ``fast.cell_backward.backward_rule``).
    Inputs and outputs are batch-major like the layer's; the transposes to and from the
    loop's time-major order happen inside the compiled computations (fused there, instead
    of separate transpose kernels), as does the saved ``h_{t-1}`` copy in batch-major order
    for the ``recurrent_kernel`` gradient.
    """
    functions = layer.__dict__.get("_xla_explicit_functions")
    if functions is not None:
        return functions
    cell = layer.cell
    step_with_residuals, step_backward = rule

    def forward(projected, mask, reset, states, recurrent_kernel, has_mask, has_reset):
        projected = tf.transpose(projected, [1, 0, 2])  # (time, batch, gates * units)
        num_steps = _steps(projected)
        xs = tf.TensorArray(projected.dtype, size=num_steps).unstack(projected)
        if has_mask:
            mask = tf.transpose(mask, [1, 0])[:, :, None]  # (time, batch, 1)
            masks = tf.TensorArray(tf.bool, size=num_steps).unstack(mask)
        if has_reset:
            reset = tf.transpose(reset, [1, 0])[:, :, None]  # (time, batch, 1)
            resets = tf.TensorArray(tf.bool, size=num_steps).unstack(reset)
        ys = tf.TensorArray(projected.dtype, size=num_steps)
        residuals = tf.TensorArray(projected.dtype, size=num_steps)
        inputs = [tf.TensorArray(s.dtype, size=num_steps) for s in states]  # states_{t-1}
        last = tf.zeros_like(states[0])

        def body(t, states, last, ys, residuals, inputs):
            if has_reset:  # the step reads (and the backward uses) the zeroed states
                r = resets.read(t)
                states = [tf.where(r, tf.zeros_like(s), s) for s in states]
            inputs = [ta.write(t, s) for ta, s in zip(inputs, states)]
            new_states, residual = step_with_residuals(cell, xs.read(t), states, recurrent_kernel)
            output = new_states[0]
            if has_mask:
                m = masks.read(t)  # (batch, 1)
                new_states = [tf.where(m, new, old) for new, old in zip(new_states, states)]
                output = tf.where(m, output, tf.zeros_like(output))
                last = tf.where(m, output, last)
            else:
                last = output
            return (
                t + 1,
                new_states,
                last,
                ys.write(t, output),
                residuals.write(t, residual),
                inputs,
            )

        _, states, last, ys, residuals, inputs = tf.while_loop(
            lambda t, *_: t < num_steps,
            body,
            (tf.constant(0), list(states), last, ys, residuals, inputs),
            maximum_iterations=num_steps,
        )
        inputs = [ta.stack() for ta in inputs]
        h_prev = tf.transpose(inputs[0], [1, 0, 2])  # (batch, time, units)
        saved = [residuals.stack(), h_prev, *inputs]
        return tf.transpose(ys.stack(), [1, 0, 2]), last, states, saved

    def backward(
        mask, reset, kernel_transposed, saved, d_outputs, d_last, d_states, has_mask, has_reset
    ):
        residuals, inputs = saved[0], saved[2:]
        num_steps = _steps(residuals)
        d_outputs = tf.transpose(d_outputs, [1, 0, 2])  # (time, batch, units)
        if has_mask:
            mask = tf.transpose(mask, [1, 0])  # (time, batch)
        if has_reset:
            reset = tf.transpose(reset, [1, 0])  # (time, batch)
        d_zs = tf.TensorArray(residuals.dtype, size=num_steps)

        def body(t, d_states, d_last, d_zs):
            step = num_steps - 1 - t
            d_new = list(d_states)
            d_new[0] = d_new[0] + d_outputs[step] + d_last  # h_t is the output
            if has_mask:
                m = mask[step][:, None]
                d_new = [tf.where(m, d, tf.zeros_like(d)) for d in d_new]
            states = [s[step] for s in inputs]
            d_z, d_prev = step_backward(cell, residuals[step], states, kernel_transposed, d_new)
            if has_mask:  # a masked step passed its states through unchanged
                d_prev = [tf.where(m, p, d) for p, d in zip(d_prev, d_states)]
                d_last = tf.where(m, tf.zeros_like(d_last), d_last)
            else:
                d_last = tf.zeros_like(d_last)
            if has_reset:  # zeroed states: nothing flows to the steps before the reset
                r = reset[step][:, None]
                d_prev = [tf.where(r, tf.zeros_like(d), d) for d in d_prev]
            return t + 1, d_prev, d_last, d_zs.write(step, d_z)

        _, d_states, _, d_zs = tf.while_loop(
            lambda t, *_: t < num_steps,
            body,
            (tf.constant(0), list(d_states), d_last, d_zs),
            maximum_iterations=num_steps,
        )
        return tf.transpose(d_zs.stack(), [1, 0, 2]), d_states  # (batch, time, ...)

    functions = (
        tf.function(forward, jit_compile=True),
        tf.function(backward, jit_compile=True),
    )
    object.__setattr__(layer, "_xla_explicit_functions", functions)  # untracked
    return functions


def explicit_time_loop(
    layer, projected, mask, states, reset=None, gradient_dtype="float32", parts=1
):
    """``_time_loop`` as XLA computations with a hand-written gradient (``jit_time_loop``).

    The forward computation also returns what the backward pass needs (per-step gate
    activations and input states), so nothing is recomputed. With ``parts`` > 1 the batch's
    rows run as that many forward (and backward) computations side by side, under one
    gradient: the recurrent kernel is transposed once for all of them, and the gradient of
    ``recurrent_kernel`` is one ``(units, batch * time) @ (batch * time, gates * units)``
    product over every part's rows (operands in ``gradient_dtype``, result float32), not a
    transpose and a product per part.
    """
    forward, backward = _explicit_xla_functions(layer, backward_rule(layer.cell))
    has_mask, has_reset = mask is not None, reset is not None
    recurrent_kernel = tf.convert_to_tensor(layer.cell.recurrent_kernel)
    sizes = _part_sizes(projected, parts)

    def rows(value):
        return _split_rows(value, sizes, parts)

    masks = [_flag(m)[0] for m in rows(mask)]
    resets = [_flag(r)[0] for r in rows(reset)]

    @tf.custom_gradient
    def loop(projected, recurrent_kernel, *states):
        # stop_gradient: a tape must not try to differentiate the XLA function itself
        # (its while loop's TensorLists cannot leave it); `grad` below is the gradient
        pieces = [
            forward(
                *tf.nest.map_structure(tf.stop_gradient, (x, m, r, part, recurrent_kernel)),
                has_mask,
                has_reset,
            )
            for x, m, r, *part in zip(rows(projected), masks, resets, *map(rows, states))
        ]
        outputs, last, final = _join_parts(pieces, len(states))
        results = [outputs, last, *final]  # outputs: (batch, time, units)

        def grad(*upstream):
            upstream = [tf.zeros_like(r) if u is None else u for u, r in zip(upstream, results)]
            kernel_transposed = tf.transpose(recurrent_kernel)  # outside XLA: cell_backward
            d_zs, d_states = [], []
            for piece, m, r, d_outputs, d_last, *d_final in zip(
                pieces, masks, resets, *map(rows, upstream)
            ):
                d_z, d_part_states = backward(
                    m,
                    r,
                    kernel_transposed,
                    piece[3],  # saved
                    d_outputs,
                    d_last,
                    list(d_final),
                    has_mask,
                    has_reset,
                )  # d_z: (rows, time, gates * units), the gradient of the part's `projected`
                d_zs.append(d_z)
                d_states.append(d_part_states)
            d_z = _join_rows(d_zs)
            units = recurrent_kernel.shape[0]
            h_prev = tf.reshape(_join_rows([piece[3][1] for piece in pieces]), [-1, units])
            d_z_flat = tf.reshape(d_z, [-1, d_z.shape[-1]])
            d_kernel = tf.matmul(
                tf.cast(h_prev, gradient_dtype), tf.cast(d_z_flat, gradient_dtype), transpose_a=True
            )
            d_kernel = tf.cast(d_kernel, tf.float32)
            d_initial = [_join_rows([d[i] for d in d_states]) for i in range(len(states))]
            return [d_z, d_kernel, *d_initial]

        return results, grad

    outputs, last, *final = loop(projected, recurrent_kernel, *states)
    return outputs, last, list(final)
