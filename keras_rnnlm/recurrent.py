"""``Recurrent``: runs a recurrent cell over the time axis.

The reference time loop (``Recurrent._time_loop``) is a bounded ``tf.while_loop``
(XLA-compilable, ``jit_compile=True``). The input half of every step, ``x_t @ kernel + bias``,
is computed for all time steps at once before the loop (``cell.project_inputs``); only
``h_{t-1} @ recurrent_kernel`` and the gate arithmetic run per step. ``keras.ops.scan`` would
also work, but its TensorFlow implementation routes the carry through TensorArrays on every
step; the direct loop is faster and equally portable to XLA.

``implementation="fast"`` (or ``"auto"`` on a model compiled for the fast path) runs the same
loop through ``keras_rnnlm.fast.time_loop`` instead: XLA-compiled, with a hand-written
backward for LSTM and SimpleRNN cells. See ``keras_rnnlm.fast`` for how the choice is made.
"""

import keras
import tensorflow as tf
from keras import ops

from keras_rnnlm.distributed_stream import global_state_batch, replica_state_variables
from keras_rnnlm.fast import check_implementation
from keras_rnnlm.fast.projection import project_inputs as fast_project_inputs
from keras_rnnlm.fast.time_loop import fast_time_loop

_PACKAGE = "keras_rnnlm"


def as_list(states):
    """``states`` as a list (a cell's single state tensor becomes ``[state]``)."""
    return list(states) if isinstance(states, (list, tuple)) else [states]


def check_reset(reset, name: str = "layer"):
    """``reset`` as a bool tensor ``(batch, time)`` (None stays None), or a clear error.

    Args:
        reset: None, or per-row resets: bool or integer 0/1 values of rank 2.
        name: the layer's name, for the error message.

    Returns:
        None or the bool tensor.

    Example:

    >>> check_reset(np.array([[0, 1, 0]])).dtype
    tf.bool
    """
    if reset is None:
        return None
    reset = tf.convert_to_tensor(reset)
    if reset.shape.rank is not None and reset.shape.rank != 2:
        raise ValueError(
            f"{name}: `reset` must have rank 2 (batch, time), got shape {tuple(reset.shape)}."
        )
    if reset.dtype == tf.bool:
        return reset
    if not (reset.dtype.is_integer or reset.dtype.is_floating):
        raise TypeError(f"{name}: `reset` must be bool or 0/1 numbers, got {reset.dtype.name}.")
    return tf.not_equal(reset, tf.zeros((), reset.dtype))


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
        implementation: ``"reference"`` (the plain loop below, differentiated by
            TensorFlow), ``"fast"`` (``keras_rnnlm.fast.time_loop``: XLA-compiled forward and
            backward) or ``"auto"`` (default: fast when the layer's runtime switch
            ``jit_time_loop`` is on, which ``RNNLanguageModel.compile`` sets for the fast
            path; reference otherwise). Same results (float32: 1e-5).

    Call arguments:
        inputs: ``(batch, time, features)``.
        mask: optional boolean ``(batch, time)``, True at real steps. Masked steps keep the
            previous state and output zeros. Filled in automatically from an
            ``Embedding(mask_zero=True)`` or ``Masking`` layer.
        initial_state: optional list of ``(batch, units)`` tensors (default zeros, or the
            carried states when ``stateful``).
        training: passed to nothing (cells are deterministic); kept for the Keras protocol.
        reset: optional ``(batch, time)`` bool or 0/1 ints, per-row state resets:
            ``reset[b, t]`` true zeroes row ``b``'s states just before step ``t`` (a new
            document starts there), so its outputs from ``t`` on are those of the row started
            alone from zero states, and no gradient flows back across the reset. Other rows
            keep their states. Not with ``go_backwards``.

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
        implementation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_implementation(implementation)
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
        self.implementation = implementation
        self.supports_masking = True
        self.state_variables = None

    #: Runtime switch (not in the config) for ``implementation="auto"``: run the fast time loop.
    #: ``RNNLanguageModel.compile`` sets it when it picks the fast path.
    jit_time_loop = False
    #: Runtime switch (not in the config) for the fast time loop's training calls: the dtype of
    #: the input projection's and the weight gradients' matmul operands (``"bfloat16"`` or
    #: ``"float32"``), resolved by ``compile`` from the model's ``output_dtype``.
    training_matmul_dtype = "float32"

    @property
    def uses_fast_time_loop(self):
        """Whether ``call`` runs ``keras_rnnlm.fast.time_loop`` (else the reference loop)."""
        if self.implementation == "auto":
            return self.jit_time_loop
        return self.implementation == "fast"

    @property
    def state_sizes(self):
        return as_list(self.cell.state_size)

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
            # the saved states keep the global batch's shape whatever the replicas; under
            # several replicas they stay zero and the live states are per replica, untracked
            # (object.__setattr__), by design not saved: keras_rnnlm.distributed_stream
            saved = [
                self.add_weight(
                    shape=(global_state_batch(batch), size),
                    initializer="zeros",
                    trainable=False,
                    name=f"state_{i}",
                )
                for i, size in enumerate(self.state_sizes)
            ]
            live = replica_state_variables(batch, self.state_sizes, self.name, self.variable_dtype)
            object.__setattr__(self, "_saved_states", saved)
            object.__setattr__(self, "state_variables", live or saved)

    def reset_state(self):
        """Zero the carried states of a stateful layer (no-op otherwise), on every replica."""
        live = self.state_variables or []
        saved = getattr(self, "_saved_states", [])
        for variable in live + [v for v in saved if all(v is not w for w in live)]:
            variable.assign(tf.zeros(variable.shape, variable.dtype))

    def get_initial_state(self, batch_size):
        return [
            ops.zeros((batch_size, size), dtype=self.compute_dtype) for size in self.state_sizes
        ]

    def call(self, inputs, mask=None, initial_state=None, training=False, reset=None):
        reset = check_reset(reset, self.name)
        if reset is not None and self.go_backwards:
            raise ValueError(
                f"{self.name}: per-row `reset` is not supported with go_backwards=True "
                "(a reset marks where a document starts when reading forwards)."
            )
        batch_size = ops.shape(inputs)[0]
        if initial_state is not None:
            states = as_list(initial_state)
        elif self.stateful:
            states = [ops.convert_to_tensor(v) for v in self.state_variables]
        else:
            states = self.get_initial_state(batch_size)
        if self.go_backwards:
            inputs = ops.flip(inputs, axis=1)
            mask = None if mask is None else ops.flip(mask, axis=1)

        if self.uses_fast_time_loop:  # like keras.layers.LSTM.inner_loop trying cuDNN
            dtype = self.training_matmul_dtype if training else "float32"
            projected = fast_project_inputs(self.cell, inputs, dtype)
            outputs, last_output, states = fast_time_loop(
                self, projected, mask, states, reset, gradient_dtype=dtype
            )
        else:
            projected = self.cell.project_inputs(inputs)  # (batch, time, gates * units)
            outputs, last_output, states = self._time_loop(projected, mask, states, reset)

        if self.stateful:
            for variable, state in zip(self.state_variables, states, strict=True):
                variable.assign(state)
        result = outputs if self.return_sequences else last_output
        if self.return_state:
            return [result, *states]
        return result

    def _time_loop(self, projected, mask, states, reset=None):
        """The reference loop: ``cell.step`` at every time step; masked steps keep the state;
        a row's states are zeroed before the steps where ``reset`` (bool ``(batch, time)``) is
        true."""
        time_major = tf.transpose(projected, [1, 0, 2])  # (time, batch, gates * units)
        num_steps = tf.shape(time_major)[0]
        static_steps = time_major.shape[0]
        xs = tf.TensorArray(time_major.dtype, size=num_steps).unstack(time_major)
        if mask is not None:
            mask_tm = tf.transpose(tf.cast(mask, "bool"), [1, 0])[:, :, None]  # (time, batch, 1)
            masks = tf.TensorArray(tf.bool, size=num_steps).unstack(mask_tm)
        if reset is not None:
            reset_tm = tf.transpose(tf.cast(reset, "bool"), [1, 0])[:, :, None]
            resets = tf.TensorArray(tf.bool, size=num_steps).unstack(reset_tm)
        ys = tf.TensorArray(self.compute_dtype, size=num_steps)
        last = tf.zeros_like(states[0][:, : self.cell.output_size])

        def body(t, states, last, ys):
            if reset is not None:
                r = resets.read(t)  # (batch, 1)
                states = [tf.where(r, tf.zeros_like(s), s) for s in states]
            output, new_states = self.cell.step(xs.read(t), states)
            new_states = as_list(new_states)
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
                "implementation": self.implementation,
            }
        )
        return config
