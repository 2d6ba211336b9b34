"""Hand-written backward steps of ``SimpleRNNCell`` and ``LSTMCell`` for the fast time loop.

The reference is TensorFlow's automatic differentiation of the cells' ``step``
(``keras_rnnlm.cells``); ``tests/fast_test.py`` checks these against it (float32, 1e-5) and
against finite differences (float64, 1e-5). Both cells compute ``z = projected_x + h_{t-1} @
recurrent_kernel`` and output ``h_t = new_states[0]``, so one step's backward pass is

* ``step_with_residuals(cell, projected_x, states, recurrent_kernel) -> (new_states,
  residuals)``: the step, also returning the activations its backward pass needs (saved per
  time step);
* ``step_backward(cell, residuals, states, kernel_transposed, d_new_states) -> (d_z,
  d_states)``: the gradient with respect to ``z`` (which is also the gradient of
  ``projected_x``) and to the previous states. The time loop sums ``h_{t-1}^T @ d_z`` over all
  steps in one matrix product for the gradient of ``recurrent_kernel``.

``kernel_transposed`` is ``recurrent_kernel`` transposed *before* the XLA computation (a
parameter of it): with ``d_z @ transpose(recurrent_kernel)`` XLA folds the transpose into the
dot's contracting dimensions, and that dot ran 3x slower on CPU (0.42 vs 0.13 ms per step at
batch 32, ``benchmarks/RESULTS.md``).

Per-row state resets need nothing here: the time loop (``fast.time_loop``) zeroes the reset
rows' states before calling ``step_with_residuals`` (so the saved ``states`` are the zeroed
ones) and zeroes those rows of the returned ``d_states`` (nothing reaches earlier steps).
"""

from keras import ops

from keras_rnnlm.cells import LSTMCell, SimpleRNNCell


def simple_rnn_step_with_residuals(cell, projected_inputs, states, recurrent_kernel):
    """``h_t = tanh(z)``; residuals: ``h_t`` ``(batch, units)``."""
    h = ops.tanh(projected_inputs + ops.matmul(states[0], recurrent_kernel))
    return [h], h


def simple_rnn_step_backward(cell, residuals, states, kernel_transposed, d_new_states):
    """Gradients of ``z`` and ``h_{t-1}`` from the gradient of ``h_t``."""
    h = residuals
    d_z = d_new_states[0] * (1.0 - h * h)  # tanh'
    return d_z, [ops.matmul(d_z, kernel_transposed)]


def lstm_step_with_residuals(cell, projected_inputs, states, recurrent_kernel):
    """The LSTM step; residuals ``[i, f, g, o, tanh(c_t)]`` concatenated, ``(batch, 5 * units)``."""
    h_prev, c_prev = states
    z = projected_inputs + ops.matmul(h_prev, recurrent_kernel)  # (batch, 4 * units)
    z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
    i, f, o = ops.sigmoid(z_i), ops.sigmoid(z_f), ops.sigmoid(z_o)
    g = ops.tanh(z_c)
    c = f * c_prev + i * g
    tanh_c = ops.tanh(c)
    h = o * tanh_c
    return [h, c], ops.concatenate([i, f, g, o, tanh_c], axis=-1)


def lstm_step_backward(cell, residuals, states, kernel_transposed, d_new_states):
    """Gradients of ``z`` and ``[h_{t-1}, c_{t-1}]`` from those of ``[h_t, c_t]``."""
    c_prev = states[1]
    d_h, d_c = d_new_states
    i, f, g, o, tanh_c = ops.split(residuals, 5, axis=-1)
    d_o = d_h * tanh_c
    d_c = d_c + d_h * o * (1.0 - tanh_c * tanh_c)  # through h_t = o * tanh(c_t)
    d_z = ops.concatenate(
        [
            d_c * g * i * (1.0 - i),  # input gate (sigmoid')
            d_c * c_prev * f * (1.0 - f),  # forget gate
            d_c * i * (1.0 - g * g),  # candidate (tanh')
            d_o * o * (1.0 - o),  # output gate
        ],
        axis=-1,
    )
    d_h_prev = ops.matmul(d_z, kernel_transposed)
    return d_z, [d_h_prev, d_c * f]


#: cell class -> (step_with_residuals, step_backward). Exact classes only: a subclass may
#: change the step, so it gets the generic compiled loop (recomputed forward) instead.
BACKWARD_RULES = {
    SimpleRNNCell: (simple_rnn_step_with_residuals, simple_rnn_step_backward),
    LSTMCell: (lstm_step_with_residuals, lstm_step_backward),
}


def backward_rule(cell):
    """The ``(step_with_residuals, step_backward)`` pair of ``cell``, or None."""
    return BACKWARD_RULES.get(type(cell))
