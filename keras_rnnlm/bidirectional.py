"""``Bidirectional``: a ``Recurrent`` layer forwards and a copy of it backwards, merged."""

import keras
import tensorflow as tf
from keras import ops

from keras_rnnlm.recurrent import as_list

_PACKAGE = "keras_rnnlm"


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
        forward = as_list(self.forward_layer(inputs, mask=mask, training=training))
        backward = as_list(self.backward_layer(inputs, mask=mask, training=training))
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
