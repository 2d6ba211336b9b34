"""Layers that run cells over time: ``Recurrent`` (``keras_rnnlm.recurrent``),
``Bidirectional`` (``keras_rnnlm.bidirectional``) and ``StackedRecurrent`` (here).

All three are importable from this module.
"""

import keras

from keras_rnnlm.bidirectional import Bidirectional, reverse_padded
from keras_rnnlm.cells import get_cell
from keras_rnnlm.fast import check_implementation
from keras_rnnlm.recurrent import Recurrent, as_list

__all__ = [
    "Bidirectional",
    "Recurrent",
    "StackedRecurrent",
    "as_list",
    "residual_connection",
    "reverse_padded",
]

_PACKAGE = "keras_rnnlm"


def residual_connection(residual: bool, index: int, outputs, inputs):
    """The one residual rule of a stack: ``outputs + inputs`` for layer ``index > 0`` when
    ``residual`` is on and the widths match (the first layer reads the embeddings, so it never
    adds them); ``outputs`` otherwise. Works on tensors and on lists of per-step tensors.

    Example:

    >>> residual_connection(True, 1, ops.ones((2, 4)), ops.ones((2, 4)))  # all 2.0
    """
    if isinstance(outputs, (list, tuple)):
        return [residual_connection(residual, index, y, x) for y, x in zip(outputs, inputs)]
    if residual and index > 0 and outputs.shape[-1] == inputs.shape[-1]:
        return outputs + inputs
    return outputs


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
        implementation: ``"auto"``, ``"reference"`` or ``"fast"``, passed to every
            ``Recurrent`` layer (see there); ``"fast"`` needs the from-scratch layers.

    Call arguments:
        inputs: ``(batch, time, features)``.
        mask: optional boolean ``(batch, time)``.
        initial_state: optional list with, for every layer, that layer's list of states.
        training: enables dropout.
        reset: optional ``(batch, time)`` per-row state resets for every layer (see
            ``Recurrent``): a row's states in all layers are zeroed before the marked steps.
            Needs the from-scratch, unidirectional layers.

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
        implementation="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_implementation(implementation)
        if use_builtin_layers and implementation == "fast":
            raise ValueError('implementation="fast" needs use_builtin_layers=False.')
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
        self.implementation = implementation
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
            layer = Recurrent(
                cell, name=f"rnn_{index}", implementation=self.implementation, **common
            )
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

    def call(self, inputs, mask=None, initial_state=None, training=False, reset=None):
        if reset is not None and (self.use_builtin_layers or self.bidirectional):
            raise ValueError(
                f"{self.name}: per-row `reset` needs use_builtin_layers=False and "
                "bidirectional=False (Keras's fused layers and Bidirectional have no reset input)."
            )
        x = inputs
        final_states = []
        for i, layer in enumerate(self.rnn_layers):
            layer_input = self.dropout_layers[i](x, training=training)
            kwargs = {"mask": mask, "training": training}
            if reset is not None:
                kwargs["reset"] = reset
            if initial_state is not None:
                kwargs["initial_state"] = list(initial_state[i])
            result = layer(layer_input, **kwargs)
            y, states = result[0], list(result[1:])
            y = residual_connection(self.residual, i, y, x)
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
                "implementation": self.implementation,
            }
        )
        return config
