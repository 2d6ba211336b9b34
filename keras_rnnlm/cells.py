"""Recurrent cells: one time step each, written from the lecture's equations.

Every cell follows the Keras cell protocol (``state_size``, ``output_size``,
``call(inputs, states, training=False) -> (output, new_states)``), so it also runs inside
``keras.layers.RNN``, and keeps Keras's weight layout (``kernel``, ``recurrent_kernel``,
``bias``), so ``cell.set_weights(keras_cell.get_weights())`` reproduces Keras's outputs.

Each cell splits its step in two so that ``keras_rnnlm.layers.Recurrent`` can hoist the input
half out of the time loop:

* ``project_inputs(x)``: the part that depends only on the input, ``x @ kernel (+ bias)``. It
  works on any leading shape, so the layer applies it once to a whole ``(batch, time, features)``
  tensor: one large matrix multiply instead of ``time`` small ones.
* ``step(projected_x, states)``: the recurrence, which must stay inside the loop.

The fast path's hand-written backward steps of ``SimpleRNNCell`` and ``LSTMCell`` live in
``keras_rnnlm.fast.cell_backward``; these classes are the reference.
"""

import keras
from keras import ops

_PACKAGE = "keras_rnnlm"


class _RecurrentCell(keras.layers.Layer):
    """Shared constructor arguments, config and protocol helpers of the cells."""

    #: number of stacked gate blocks in kernel (1 for SimpleRNN, 4 for LSTM, 3 for GRU)
    num_gates = 1

    def __init__(
        self,
        units,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
            raise ValueError(f"`units` must be a positive integer, got {units!r}.")
        self.units = units
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    @property
    def state_size(self):
        return self.units

    @property
    def output_size(self):
        return self.units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"{self.name}: the last input dimension must be known, got {input_shape}."
            )
        width = self.num_gates * self.units
        self.kernel = self.add_weight(
            shape=(input_dim, width), initializer=self.kernel_initializer, name="kernel"
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, width),
            initializer=self.recurrent_initializer,
            name="recurrent_kernel",
        )
        self.bias = self._build_bias() if self.use_bias else None

    def _build_bias(self):
        return self.add_weight(
            shape=(self.num_gates * self.units,), initializer=self.bias_initializer, name="bias"
        )

    def project_inputs(self, inputs):
        """``inputs @ kernel + bias`` for inputs of shape ``(..., features)``."""
        projected = ops.matmul(inputs, self.kernel)
        if self.use_bias:
            projected = projected + self.bias
        return projected

    def step(self, projected_inputs, states):
        raise NotImplementedError

    def call(self, inputs, states, training=False):
        return self.step(self.project_inputs(inputs), states)

    def get_initial_state(self, batch_size=None):
        sizes = self.state_size if isinstance(self.state_size, list) else [self.state_size]
        return [ops.zeros((batch_size, size), dtype=self.compute_dtype) for size in sizes]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SimpleRNNCell(_RecurrentCell):
    """Elman cell: ``h_t = tanh(W_x x_t + W_h h_{t-1} + b)``.

    Args:
        units: positive int, size of the hidden state ``h``.
        use_bias: whether to add the bias ``b``.
        kernel_initializer: initializer of ``W_x`` (``kernel``, shape ``(features, units)``).
        recurrent_initializer: initializer of ``W_h`` (``recurrent_kernel``, ``(units, units)``).
        bias_initializer: initializer of ``b`` (``bias``, ``(units,)``).

    Call arguments:
        inputs: ``(batch, features)``, the input ``x_t`` of one time step.
        states: list with one tensor ``h_{t-1}`` of shape ``(batch, units)``.
        training: unused; kept for the Keras cell protocol.

    Returns:
        ``(h_t, [h_t])``.

    Example:

    >>> cell = SimpleRNNCell(4)
    >>> layer = keras.layers.RNN(cell)  # runs inside Keras's own loop too
    """

    def step(self, projected_inputs, states):
        h_prev = states[0] if isinstance(states, (list, tuple)) else states
        h = ops.tanh(projected_inputs + ops.matmul(h_prev, self.recurrent_kernel))
        return h, [h]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LSTMCell(_RecurrentCell):
    """Long short-term memory cell (Hochreiter & Schmidhuber 1997, with a forget gate).

    With ``z = W_x x_t + W_h h_{t-1} + b`` split into four blocks in Keras's gate order
    ``i, f, c, o``::

        i = sigmoid(z_i)            input gate
        f = sigmoid(z_f)            forget gate
        g = tanh(z_c)               candidate cell content
        o = sigmoid(z_o)            output gate
        c_t = f * c_{t-1} + i * g   cell state: the additive memory path
        h_t = o * tanh(c_t)

    Args:
        units: positive int, size of ``h`` and ``c``.
        use_bias: whether to add ``b``.
        kernel_initializer: initializer of ``kernel`` ``(features, 4 * units)``.
        recurrent_initializer: initializer of ``recurrent_kernel`` ``(units, 4 * units)``.
        bias_initializer: initializer of ``bias`` ``(4 * units,)``.
        unit_forget_bias: if True (default), the forget-gate bias starts at 1 so that the cell
            remembers by default (Jozefowicz et al. 2015); the other blocks use
            ``bias_initializer``.

    Call arguments:
        inputs: ``(batch, features)``.
        states: ``[h_{t-1}, c_{t-1}]``, each ``(batch, units)``.
        training: unused.

    Returns:
        ``(h_t, [h_t, c_t])``.

    Example:

    >>> cell = LSTMCell(8)
    >>> cell.state_size
    [8, 8]
    """

    num_gates = 4

    def __init__(self, units, unit_forget_bias=True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = unit_forget_bias

    @property
    def state_size(self):
        return [self.units, self.units]

    def _build_bias(self):
        if not self.unit_forget_bias:
            return super()._build_bias()
        base = self.bias_initializer
        units = self.units

        def initializer(shape, dtype=None):
            return ops.concatenate(
                [
                    base((units,), dtype=dtype),
                    ops.ones((units,), dtype=dtype),
                    base((2 * units,), dtype=dtype),
                ]
            )

        return self.add_weight(shape=(4 * units,), initializer=initializer, name="bias")

    def step(self, projected_inputs, states):
        h_prev, c_prev = states
        z = projected_inputs + ops.matmul(h_prev, self.recurrent_kernel)
        z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
        c = ops.sigmoid(z_f) * c_prev + ops.sigmoid(z_i) * ops.tanh(z_c)
        h = ops.sigmoid(z_o) * ops.tanh(c)
        return h, [h, c]

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GRUCell(_RecurrentCell):
    """Gated recurrent unit (Cho et al. 2014), Keras's gate order ``z, r, h``.

    With ``reset_after=True`` (Keras's default, the cuDNN variant) the reset gate multiplies
    the recurrent projection *after* the matrix product, and input and recurrent parts have
    separate biases (``bias`` has shape ``(2, 3 * units)``)::

        z = sigmoid(W_xz x + b_xz + W_hz h + b_hz)          update gate
        r = sigmoid(W_xr x + b_xr + W_hr h + b_hr)          reset gate
        n = tanh(W_xh x + b_xh + r * (W_hh h + b_hh))       candidate
        h_t = z * h_{t-1} + (1 - z) * n

    With ``reset_after=False`` (the original paper) ``n = tanh(W_xh x + W_hh (r * h) + b_h)``.

    Args:
        units: positive int, size of ``h``.
        reset_after: where the reset gate applies (see above).
        use_bias, kernel_initializer, recurrent_initializer, bias_initializer: as for
            ``SimpleRNNCell``; ``kernel`` is ``(features, 3 * units)``.

    Call arguments:
        inputs: ``(batch, features)``.
        states: ``[h_{t-1}]``.
        training: unused.

    Returns:
        ``(h_t, [h_t])``.

    Example:

    >>> cell = GRUCell(8)
    >>> cell.state_size
    8
    """

    num_gates = 3

    def __init__(self, units, reset_after=True, **kwargs):
        super().__init__(units, **kwargs)
        self.reset_after = reset_after

    def _build_bias(self):
        shape = (2, 3 * self.units) if self.reset_after else (3 * self.units,)
        return self.add_weight(shape=shape, initializer=self.bias_initializer, name="bias")

    def project_inputs(self, inputs):
        projected = ops.matmul(inputs, self.kernel)
        if self.use_bias:
            projected = projected + (self.bias[0] if self.reset_after else self.bias)
        return projected

    def step(self, projected_inputs, states):
        h_prev = states[0] if isinstance(states, (list, tuple)) else states
        x_z, x_r, x_h = ops.split(projected_inputs, 3, axis=-1)
        u = self.units
        if self.reset_after:
            inner = ops.matmul(h_prev, self.recurrent_kernel)
            if self.use_bias:
                inner = inner + self.bias[1]
            h_z, h_r, h_h = ops.split(inner, 3, axis=-1)
            z = ops.sigmoid(x_z + h_z)
            r = ops.sigmoid(x_r + h_r)
            candidate = ops.tanh(x_h + r * h_h)
        else:
            inner = ops.matmul(h_prev, self.recurrent_kernel[:, : 2 * u])
            h_z, h_r = ops.split(inner, 2, axis=-1)
            z = ops.sigmoid(x_z + h_z)
            r = ops.sigmoid(x_r + h_r)
            candidate = ops.tanh(x_h + ops.matmul(r * h_prev, self.recurrent_kernel[:, 2 * u :]))
        h = z * h_prev + (1.0 - z) * candidate
        return h, [h]

    def get_config(self):
        return {**super().get_config(), "reset_after": self.reset_after}


CELLS = {"simple_rnn": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell}


def get_cell(cell_type, units, **kwargs):
    """Build a cell from its short name: ``"simple_rnn"``, ``"lstm"`` or ``"gru"``."""
    if cell_type not in CELLS:
        raise ValueError(f"Unknown cell {cell_type!r}; expected one of {sorted(CELLS)}.")
    return CELLS[cell_type](units, **kwargs)
