"""Layers that run cells over time: ``Recurrent``, ``StackedRecurrent`` and ``Bidirectional``.

The time loop is a bounded ``tf.while_loop`` (XLA-compilable, ``jit_compile=True``). The input
half of every step, ``x_t @ kernel + bias``, is computed for all time steps at once before the
loop (``cell.project_inputs``); only ``h_{t-1} @ recurrent_kernel`` and the gate arithmetic run
per step. ``keras.ops.scan`` would also work, but its TensorFlow implementation routes the carry
through TensorArrays on every step; the direct loop is faster and equally portable to XLA.
"""

import keras
import tensorflow as tf
from keras import ops

from keras_rnnlm.cells import get_cell

_PACKAGE = "keras_rnnlm"


def _as_list(states):
    return list(states) if isinstance(states, (list, tuple)) else [states]


def reverse_padded(x, lengths):
    """Reverse each row's first ``lengths[b]`` time steps, keeping right padding in place.

    ``x`` is ``(batch, time, ...)``; ``lengths`` is ``(batch,)``. For a right-padded batch this
    is what a backward RNN should read: the last real token first, padding still at the end.
    Involution: applying it twice gives ``x`` back.
    """
    time = ops.shape(x)[1]
    positions = ops.arange(time, dtype="int32")[None, :]  # (1, time)
    lengths = ops.cast(lengths, "int32")[:, None]  # (batch, 1)
    index = ops.where(positions < lengths, lengths - 1 - positions, positions)  # (batch, time)
    return tf.gather(x, index, batch_dims=1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Recurrent(keras.layers.Layer):
    """Runs a recurrent cell over the time axis.

    Args:
        cell: a cell instance (``SimpleRNNCell``, ``LSTMCell``, ``GRUCell`` or any cell with
            ``project_inputs``/``step``), or a config dict of one.
        return_sequences: return the output of every step ``(batch, time, units)`` (True) or
            only the last real step's ``(batch, units)`` (False).
        return_state: also return the final states (one tensor per cell state).
        go_backwards: process the sequence from the end, like ``keras.layers.RNN``: the
            outputs come in reversed time order. With a right-padded mask the padded steps
            come first and leave the state untouched, so the real recurrence starts at each
            sequence's last real token.
        stateful: keep the final states of a batch in variables and use them as the initial
            states of the next batch (truncated back-propagation through time over a token
            stream). Needs a fixed batch size; ``reset_state()`` zeros the carried states.

    Call arguments:
        inputs: ``(batch, time, features)``.
        mask: optional boolean ``(batch, time)``, True at real steps. Masked steps keep the
            previous state and output zeros. Filled in automatically from an
            ``Embedding(mask_zero=True)`` or ``Masking`` layer.
        initial_state: optional list of ``(batch, units)`` tensors (default zeros, or the
            carried states when ``stateful``).
        training: passed to nothing (cells are deterministic); kept for the Keras protocol.

    Returns:
        ``outputs`` (shape as described by ``return_sequences``), followed by the final states
        when ``return_state=True``: ``[outputs, h]`` or ``[outputs, h, c]`` for an LSTM.

    Example:

    >>> layer = Recurrent(LSTMCell(16), return_sequences=True)
    >>> y = layer(keras.random.normal((2, 5, 8)))  # (2, 5, 16)
    """

    def __init__(
        self,
        cell,
        return_sequences=False,
        return_state=False,
        go_backwards=False,
        stateful=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(cell, dict):
            cell = keras.saving.deserialize_keras_object(cell)
        if not (hasattr(cell, "project_inputs") and hasattr(cell, "step")):
            raise TypeError(
                f"`cell` must provide project_inputs() and step() (see keras_rnnlm.cells); "
                f"got {type(cell).__name__}."
            )
        self.cell = cell
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards
        self.stateful = stateful
        self.supports_masking = True
        self.state_variables = None

    #: Run the time loop as its own XLA-compiled function (forward and gradient) even when the
    #: surrounding computation is not XLA-compiled: ``compile_language_model(...,
    #: jit_compile="recurrence")`` sets it. Cells with a hand-written step gradient
    #: (``SimpleRNNCell``, ``LSTMCell``) save their gate activations in the forward computation
    #: and run an explicit backward-through-time loop (``_explicit_time_loop``); other cells
    #: recompute the forward inside the compiled gradient (``_compiled_time_loop``). A runtime
    #: switch, not part of the config. One XLA compilation per input shape.
    jit_time_loop = False

    @property
    def state_sizes(self):
        return _as_list(self.cell.state_size)

    def build(self, input_shape):
        if not self.cell.built:  # a deserialized cell arrives built
            self.cell.build(input_shape)
        if self.stateful:
            batch = input_shape[0]
            if batch is None:
                raise ValueError(
                    f"{self.name}: a stateful layer needs a fixed batch size; use a dataset "
                    "with drop_remainder=True or keras.Input(batch_size=...)."
                )
            self.state_variables = [
                self.add_weight(
                    shape=(batch, size), initializer="zeros", trainable=False, name=f"state_{i}"
                )
                for i, size in enumerate(self.state_sizes)
            ]

    def reset_state(self):
        """Zero the carried states of a stateful layer (no-op otherwise)."""
        for variable in self.state_variables or []:
            variable.assign(ops.zeros_like(variable))

    def get_initial_state(self, batch_size):
        return [
            ops.zeros((batch_size, size), dtype=self.compute_dtype) for size in self.state_sizes
        ]

    def call(self, inputs, mask=None, initial_state=None, training=False):
        batch_size = ops.shape(inputs)[0]
        if initial_state is not None:
            states = _as_list(initial_state)
        elif self.stateful:
            states = [ops.convert_to_tensor(v) for v in self.state_variables]
        else:
            states = self.get_initial_state(batch_size)
        if self.go_backwards:
            inputs = ops.flip(inputs, axis=1)
            mask = None if mask is None else ops.flip(mask, axis=1)

        projected = self.cell.project_inputs(inputs)  # (batch, time, gates * units)
        if not self.jit_time_loop:
            time_loop = self._time_loop
        elif hasattr(self.cell, "step_backward"):
            time_loop = self._explicit_time_loop
        else:
            time_loop = self._compiled_time_loop
        outputs, last_output, states = time_loop(projected, mask, states)

        if self.stateful:
            for variable, state in zip(self.state_variables, states, strict=True):
                variable.assign(state)
        result = outputs if self.return_sequences else last_output
        if self.return_state:
            return [result, *states]
        return result

    def _time_loop(self, projected, mask, states):
        time_major = tf.transpose(projected, [1, 0, 2])  # (time, batch, gates * units)
        num_steps = tf.shape(time_major)[0]
        static_steps = time_major.shape[0]
        xs = tf.TensorArray(time_major.dtype, size=num_steps).unstack(time_major)
        if mask is not None:
            mask_tm = tf.transpose(tf.cast(mask, "bool"), [1, 0])[:, :, None]  # (time, batch, 1)
            masks = tf.TensorArray(tf.bool, size=num_steps).unstack(mask_tm)
        ys = tf.TensorArray(self.compute_dtype, size=num_steps)
        last = tf.zeros_like(states[0][:, : self.cell.output_size])

        def body(t, states, last, ys):
            output, new_states = self.cell.step(xs.read(t), states)
            new_states = _as_list(new_states)
            if mask is not None:
                m = masks.read(t)
                new_states = [tf.where(m, new, old) for new, old in zip(new_states, states)]
                output = tf.where(m, output, tf.zeros_like(output))
                last = tf.where(m, output, last)
            else:
                last = output
            return t + 1, new_states, last, ys.write(t, output)

        _, states, last, ys = tf.while_loop(
            lambda t, *_: t < num_steps,
            body,
            (tf.constant(0), states, last, ys),
            maximum_iterations=static_steps if static_steps is not None else num_steps,
        )
        outputs = tf.transpose(ys.stack(), [1, 0, 2])  # (batch, time, units)
        return outputs, last, states

    def _pure_time_loop(self, projected, mask, states, weights):
        """``_time_loop`` with the cell's weights given as tensors (a pure function)."""
        mapping = list(zip(self.cell.trainable_weights, weights))
        with keras.StatelessScope(state_mapping=mapping):
            return self._time_loop(projected, mask, states)

    def _xla_functions(self):
        functions = self.__dict__.get("_xla_loop_functions")
        if functions is not None:
            return functions

        def forward(projected, mask, states, weights, has_mask):
            return self._pure_time_loop(projected, mask if has_mask else None, states, weights)

        def backward(projected, mask, states, weights, has_mask, upstream):
            # recompute the forward inside the same XLA computation: the while loop's saved
            # intermediates (TensorLists) cannot be outputs of an XLA function
            with tf.GradientTape() as tape:
                tape.watch([projected, states, weights])
                outputs, last, final = forward(projected, mask, states, weights, has_mask)
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
        object.__setattr__(self, "_xla_loop_functions", functions)  # untracked: never saved
        return functions

    def _compiled_time_loop(self, projected, mask, states):
        """``_time_loop`` as one XLA computation, and its gradient as another (``jit_time_loop``).

        TensorFlow cannot differentiate an XLA function holding a while loop through its
        saved intermediates, so the gradient recomputes the loop's forward pass (one extra
        recurrence forward, inside the compiled backward computation).
        """
        forward, backward = self._xla_functions()
        has_mask = mask is not None
        mask = mask if has_mask else tf.zeros((), tf.bool)
        weights = [tf.convert_to_tensor(w) for w in self.cell.trainable_weights]
        num_states = len(states)

        @tf.custom_gradient
        def loop(projected, mask, *flat):
            states, weights = list(flat[:num_states]), list(flat[num_states:])
            outputs, last, final = forward(  # stop_gradient: see _explicit_time_loop
                *tf.nest.map_structure(tf.stop_gradient, (projected, mask, states, weights)),
                has_mask,
            )
            results = [outputs, last, *final]

            def grad(*upstream):
                upstream = [tf.zeros_like(r) if u is None else u for u, r in zip(upstream, results)]
                d_projected, d_states, d_weights = backward(
                    projected, mask, states, weights, has_mask, upstream
                )
                return [d_projected, None, *d_states, *d_weights]

            return results, grad

        outputs, last, *final = loop(projected, mask, *states, *weights)
        return outputs, last, list(final)

    def _explicit_xla_functions(self):
        """Forward saving per-step residuals, and a hand-written backward, both XLA-compiled.

        For cells with ``step_with_residuals``/``step_backward`` (see ``keras_rnnlm.cells``).
        Inputs and outputs are batch-major like the layer's; the transposes to and from the
        loop's time-major order happen inside the compiled computations (fused there, instead
        of separate transpose kernels), as does the saved ``h_{t-1}`` copy in batch-major order
        for the ``recurrent_kernel`` gradient.
        """
        functions = self.__dict__.get("_xla_explicit_functions")
        if functions is not None:
            return functions
        cell = self.cell

        def forward(projected, mask, states, recurrent_kernel, has_mask):
            projected = tf.transpose(projected, [1, 0, 2])  # (time, batch, gates * units)
            num_steps = projected.shape[0]
            xs = tf.TensorArray(projected.dtype, size=num_steps).unstack(projected)
            if has_mask:
                mask = tf.transpose(mask, [1, 0])[:, :, None]  # (time, batch, 1)
                masks = tf.TensorArray(tf.bool, size=num_steps).unstack(mask)
            ys = tf.TensorArray(projected.dtype, size=num_steps)
            residuals = tf.TensorArray(projected.dtype, size=num_steps)
            inputs = [tf.TensorArray(s.dtype, size=num_steps) for s in states]  # states_{t-1}
            last = tf.zeros_like(states[0])

            def body(t, states, last, ys, residuals, inputs):
                inputs = [ta.write(t, s) for ta, s in zip(inputs, states)]
                new_states, residual = cell.step_with_residuals(
                    xs.read(t), states, recurrent_kernel
                )
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

        def backward(mask, recurrent_kernel, saved, d_outputs, d_last, d_states, has_mask):
            residuals, inputs = saved[0], saved[2:]
            num_steps = residuals.shape[0]
            d_outputs = tf.transpose(d_outputs, [1, 0, 2])  # (time, batch, units)
            if has_mask:
                mask = tf.transpose(mask, [1, 0])  # (time, batch)
            d_zs = tf.TensorArray(residuals.dtype, size=num_steps)

            def body(t, d_states, d_last, d_zs):
                step = num_steps - 1 - t
                d_new = list(d_states)
                d_new[0] = d_new[0] + d_outputs[step] + d_last  # h_t is the output
                if has_mask:
                    m = mask[step][:, None]
                    d_new = [tf.where(m, d, tf.zeros_like(d)) for d in d_new]
                states = [s[step] for s in inputs]
                d_z, d_prev = cell.step_backward(residuals[step], states, recurrent_kernel, d_new)
                if has_mask:  # a masked step passed its states through unchanged
                    d_prev = [tf.where(m, p, d) for p, d in zip(d_prev, d_states)]
                    d_last = tf.where(m, tf.zeros_like(d_last), d_last)
                else:
                    d_last = tf.zeros_like(d_last)
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
        object.__setattr__(self, "_xla_explicit_functions", functions)  # untracked
        return functions

    def _explicit_time_loop(self, projected, mask, states):
        """``_time_loop`` as one XLA computation with a hand-written gradient (``jit_time_loop``).

        The forward computation also returns what the backward pass needs (per-step gate
        activations and input states), so nothing is recomputed; the gradient of
        ``recurrent_kernel`` is one ``(units, time * batch) @ (time * batch, gates * units)``
        product outside the loop.
        """
        forward, backward = self._explicit_xla_functions()
        has_mask = mask is not None
        mask = tf.cast(mask, tf.bool) if has_mask else tf.zeros((), tf.bool)
        recurrent_kernel = tf.convert_to_tensor(self.cell.recurrent_kernel)

        @tf.custom_gradient
        def loop(projected, recurrent_kernel, *states):
            # stop_gradient: a tape must not try to differentiate the XLA function itself
            # (its while loop's TensorLists cannot leave it); `grad` below is the gradient
            outputs, last, final, saved = forward(
                *tf.nest.map_structure(
                    tf.stop_gradient, (projected, mask, list(states), recurrent_kernel)
                ),
                has_mask,
            )
            results = [outputs, last, *final]  # outputs: (batch, time, units)

            def grad(*upstream):
                upstream = [tf.zeros_like(r) if u is None else u for u, r in zip(upstream, results)]
                d_outputs, d_last, d_final = upstream[0], upstream[1], upstream[2:]
                d_z, d_states = backward(
                    mask, recurrent_kernel, saved, d_outputs, d_last, list(d_final), has_mask
                )  # d_z: (batch, time, gates * units), the gradient of `projected`
                units = recurrent_kernel.shape[0]
                h_prev = tf.reshape(saved[1], [-1, units])  # (batch * time, units)
                d_kernel = tf.matmul(h_prev, tf.reshape(d_z, [-1, d_z.shape[-1]]), transpose_a=True)
                return [d_z, d_kernel, *d_states]

            return results, grad

        outputs, last, *final = loop(projected, recurrent_kernel, *states)
        return outputs, last, list(final)

    def compute_mask(self, inputs, mask=None):
        output_mask = mask if self.return_sequences else None
        if self.go_backwards and output_mask is not None:
            output_mask = ops.flip(output_mask, axis=1)
        if self.return_state:
            return [output_mask] + [None] * len(self.state_sizes)
        return output_mask

    def compute_output_shape(self, input_shape):
        units = self.cell.output_size
        out = (
            (input_shape[0], input_shape[1], units)
            if self.return_sequences
            else (input_shape[0], units)
        )
        if self.return_state:
            return [out] + [(input_shape[0], size) for size in self.state_sizes]
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "cell": keras.saving.serialize_keras_object(self.cell),
                "return_sequences": self.return_sequences,
                "return_state": self.return_state,
                "go_backwards": self.go_backwards,
                "stateful": self.stateful,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Bidirectional(keras.layers.Layer):
    """Runs a ``Recurrent`` layer forwards and a copy of it backwards, and merges them.

    The backward copy reads each sequence from its last *real* token (padding is skipped
    through the mask), and its outputs are put back in input order, so position ``t`` of the
    result sees ``x_1..x_t`` (forward half) and ``x_t..x_n`` (backward half). Only use it when
    the whole input is available: a bidirectional layer cannot be a language model.

    Args:
        layer: a ``Recurrent`` layer (or its config) for the forward direction.
        merge_mode: ``"concat"`` (default), ``"sum"``, ``"mul"``, ``"ave"``.
        backward_layer: optional ``Recurrent`` for the backward direction; default a fresh copy
            of ``layer``'s config with ``go_backwards`` flipped.

    Call arguments:
        inputs: ``(batch, time, features)``.
        mask: optional boolean ``(batch, time)``, right padding False.
        training: unused.

    Returns:
        ``(batch, time, 2 * units)`` for ``concat`` with ``return_sequences``, ``(batch, 2 *
        units)`` otherwise (forward last real step and backward step at position 0); with
        ``return_state`` the forward states then the backward states follow.

    Example:

    >>> bi = Bidirectional(Recurrent(GRUCell(8), return_sequences=True))
    >>> y = bi(keras.random.normal((2, 5, 4)))  # (2, 5, 16)
    """

    MERGE_MODES = ("concat", "sum", "mul", "ave")

    def __init__(self, layer, merge_mode="concat", backward_layer=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = keras.saving.deserialize_keras_object(layer)
        if isinstance(backward_layer, dict):
            backward_layer = keras.saving.deserialize_keras_object(backward_layer)
        if merge_mode not in self.MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {self.MERGE_MODES}, got {merge_mode!r}.")
        if getattr(layer, "stateful", False):
            raise ValueError("Bidirectional does not support stateful layers.")
        self.forward_layer = layer
        if backward_layer is None:
            config = layer.get_config()
            config["name"] = "backward_" + config["name"]
            config["go_backwards"] = not config["go_backwards"]
            backward_layer = layer.__class__.from_config(config)
        if backward_layer.go_backwards == layer.go_backwards:
            raise ValueError("backward_layer must have the opposite go_backwards of layer.")
        self.backward_layer = backward_layer
        self.merge_mode = merge_mode
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.supports_masking = True

    def build(self, input_shape):
        for layer in (self.forward_layer, self.backward_layer):
            if not layer.built:
                layer.build(input_shape)

    def call(self, inputs, mask=None, training=False):
        forward = _as_list(self.forward_layer(inputs, mask=mask, training=training))
        backward = _as_list(self.backward_layer(inputs, mask=mask, training=training))
        y_forward, y_backward = forward[0], backward[0]
        if self.return_sequences:
            y_backward = ops.flip(y_backward, axis=1)  # back to input order
        merged = self._merge(y_forward, y_backward)
        if self.return_state:
            return [merged, *forward[1:], *backward[1:]]
        return merged

    def _merge(self, a, b):
        if self.merge_mode == "concat":
            return ops.concatenate([a, b], axis=-1)
        if self.merge_mode == "sum":
            return a + b
        if self.merge_mode == "mul":
            return a * b
        return (a + b) / 2.0

    def compute_mask(self, inputs, mask=None):
        output_mask = mask if self.return_sequences else None
        if self.return_state:
            n = len(self.forward_layer.state_sizes) * 2
            return [output_mask] + [None] * n
        return output_mask

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "layer": keras.saving.serialize_keras_object(self.forward_layer),
                "backward_layer": keras.saving.serialize_keras_object(self.backward_layer),
                "merge_mode": self.merge_mode,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StackedRecurrent(keras.layers.Layer):
    """Several recurrent layers on top of each other (a multi-layer RNN).

    Layer ``l`` reads the output sequence of layer ``l - 1``. Dropout is applied to the input
    of every layer and to the final output (Zaremba et al. 2014: only on the non-recurrent
    connections, never on the state carried through time). With ``residual=True`` each layer
    after the first adds its input to its output when the widths agree (skip connections for
    deeper stacks).

    Args:
        cell: ``"lstm"``, ``"gru"`` or ``"simple_rnn"``.
        units: int, or a list of ints (one per layer).
        num_layers: number of layers (ignored when ``units`` is a list).
        dropout: float in ``[0, 1)``, rate between layers (see above).
        residual: bool, add skip connections between layers of equal width.
        bidirectional: bool, wrap each layer in ``Bidirectional`` (then not usable as an LM).
        stateful: carry states across batches (see ``Recurrent``).
        use_builtin_layers: use Keras's fused ``keras.layers.LSTM``/``GRU``/``SimpleRNN``
            (cuDNN on a GPU) with the same weight layout instead of ``Recurrent``.
        cell_kwargs: dict of extra arguments for every cell (initialisers, ``unit_forget_bias``,
            ``reset_after``...).

    Call arguments:
        inputs: ``(batch, time, features)``.
        mask: optional boolean ``(batch, time)``.
        initial_state: optional list with, for every layer, that layer's list of states.
        training: enables dropout.

    Returns:
        ``(outputs, states)``: outputs ``(batch, time, units[-1])`` (doubled when
        bidirectional), and a list with every layer's list of final states.

    Example:

    >>> stack = StackedRecurrent("lstm", units=32, num_layers=2, dropout=0.2)
    >>> outputs, states = stack(keras.random.normal((2, 7, 16)))
    """

    def __init__(
        self,
        cell="lstm",
        units=200,
        num_layers=2,
        dropout=0.0,
        residual=False,
        bidirectional=False,
        stateful=False,
        use_builtin_layers=False,
        cell_kwargs=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        units_list = list(units) if isinstance(units, (list, tuple)) else [units] * num_layers
        if not units_list:
            raise ValueError("num_layers must be at least 1.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
        if bidirectional and stateful:
            raise ValueError("A bidirectional stack cannot be stateful.")
        self.cell = cell
        self.units = units_list
        self.num_layers = len(units_list)
        self.dropout = dropout
        self.residual = residual
        self.bidirectional = bidirectional
        self.stateful = stateful
        self.use_builtin_layers = use_builtin_layers
        self.cell_kwargs = dict(cell_kwargs or {})
        self.rnn_layers = [self._make_layer(i, u) for i, u in enumerate(units_list)]
        self.dropout_layers = [keras.layers.Dropout(dropout) for _ in range(self.num_layers + 1)]
        self.supports_masking = True

    def _make_layer(self, index, units):
        common = dict(return_sequences=True, return_state=True, stateful=self.stateful)
        if self.use_builtin_layers:
            builtin = {
                "lstm": keras.layers.LSTM,
                "gru": keras.layers.GRU,
                "simple_rnn": keras.layers.SimpleRNN,
            }
            if self.cell not in builtin:
                raise ValueError(f"Unknown cell {self.cell!r}; expected one of {sorted(builtin)}.")
            layer = builtin[self.cell](units, name=f"rnn_{index}", **common, **self.cell_kwargs)
        else:
            cell = get_cell(self.cell, units, name=f"{self.cell}_cell", **self.cell_kwargs)
            layer = Recurrent(cell, name=f"rnn_{index}", **common)
        if self.bidirectional:
            return (
                keras.layers.Bidirectional(layer, name=f"bi_rnn_{index}")
                if self.use_builtin_layers
                else Bidirectional(layer, name=f"bi_rnn_{index}")
            )
        return layer

    @property
    def state_sizes(self):
        """For every layer, the sizes of its states (e.g. ``[[200, 200], [200, 200]]``)."""
        per_cell = 2 if self.cell == "lstm" else 1
        directions = 2 if self.bidirectional else 1
        return [[u] * per_cell * directions for u in self.units]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer, units in zip(self.rnn_layers, self.units):
            if not layer.built:
                layer.build(shape)
            shape = shape[:-1] + (units * (2 if self.bidirectional else 1),)

    def reset_state(self):
        for layer in self.rnn_layers:
            if hasattr(layer, "reset_state"):
                layer.reset_state()

    def call(self, inputs, mask=None, initial_state=None, training=False):
        x = inputs
        final_states = []
        for i, layer in enumerate(self.rnn_layers):
            layer_input = self.dropout_layers[i](x, training=training)
            kwargs = {"mask": mask, "training": training}
            if initial_state is not None:
                kwargs["initial_state"] = list(initial_state[i])
            result = layer(layer_input, **kwargs)
            y, states = result[0], list(result[1:])
            if self.residual and i > 0 and y.shape[-1] == x.shape[-1]:
                y = y + x
            final_states.append(states)
            x = y
        return self.dropout_layers[-1](x, training=training), final_states

    def compute_mask(self, inputs, mask=None):
        return [mask, None]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "cell": self.cell,
                "units": self.units,
                "num_layers": self.num_layers,
                "dropout": self.dropout,
                "residual": self.residual,
                "bidirectional": self.bidirectional,
                "stateful": self.stateful,
                "use_builtin_layers": self.use_builtin_layers,
                "cell_kwargs": self.cell_kwargs,
            }
        )
        return config
