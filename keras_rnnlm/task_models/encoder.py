"""``RNNEncoder``: token ids -> per-token states and a sentence vector, and its pooling."""

import keras
import tensorflow as tf
from keras import ops

from keras_rnnlm.backbone import (
    BACKBONE_ARGUMENTS,
    backbone_config,
    build_backbone,
    make_backbone,
    run_backbone,
)
from keras_rnnlm.data.fit_inputs import StallFreeFitMixin

_PACKAGE = "keras_rnnlm"
POOLINGS = ("final", "mean", "max")
#: The backbone arguments every encoder-based task model stores and serializes.
ENCODER_ARGUMENTS = (*BACKBONE_ARGUMENTS, "bidirectional")


def sequence_lengths(token_ids):
    """Number of real (non-zero) tokens per row, ``(batch,)`` int32, for right-padded ids."""
    return ops.sum(ops.cast(ops.not_equal(token_ids, 0), "int32"), axis=1)


def pool(states, mask, pooling, bidirectional=False):
    """Sentence vectors ``(batch, features)`` from per-token ``states`` ``(batch, time, features)``.

    ``mask`` is boolean ``(batch, time)``, True at real tokens (right padding). ``"final"``
    takes the output at the last real token; for a bidirectional encoder the forward half is
    taken at the last real token and the backward half at position 0 (where the backward
    direction has read the whole sentence). ``"mean"``/``"max"`` pool over real tokens only.
    A row without real tokens gives zeros.
    """
    mask_f = ops.cast(mask, states.dtype)[:, :, None]  # (batch, time, 1)
    any_real = ops.cast(ops.sum(mask_f, axis=1) > 0, states.dtype)  # (batch, 1)
    if pooling == "mean":
        return ops.divide_no_nan(ops.sum(states * mask_f, axis=1), ops.sum(mask_f, axis=1))
    if pooling == "max":
        very_negative = ops.full_like(states, -1e9)
        pooled = ops.max(ops.where(mask_f > 0, states, very_negative), axis=1)
        return pooled * any_real
    if pooling != "final":
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    lengths = ops.sum(ops.cast(mask, "int32"), axis=1)  # (batch,)
    last = ops.maximum(lengths - 1, 0)[:, None]  # (batch, 1)
    at_last = tf.gather(states, last, batch_dims=1)[:, 0, :]  # (batch, features)
    if not bidirectional:
        return at_last * any_real
    half = states.shape[-1] // 2
    return ops.concatenate([at_last[:, :half], states[:, 0, half:]], axis=-1) * any_real


def encoder_config(model) -> dict:
    """The ``ENCODER_ARGUMENTS`` of ``model`` (an encoder or a model holding one's settings)."""
    return backbone_config(model, extra=("bidirectional",))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RNNEncoder(StallFreeFitMixin, keras.Model):
    """Encodes token ids into per-token states and a sentence vector.

    ``token ids -> Embedding -> StackedRecurrent (optionally bidirectional)``. Padding (id 0)
    is masked in the recurrence: a right-padded row gives exactly the states of the same
    sequence run alone, and the backward direction starts at the row's last real token.

    Args:
        vocabulary_size: number of token ids, padding (0) included.
        cell: ``"lstm"`` (default), ``"gru"`` or ``"simple_rnn"``.
        num_layers: stacked recurrent layers (default 1).
        units: hidden size of every layer (per direction).
        embedding_dim: size of the token embeddings.
        dropout: rate on the non-recurrent connections (embeddings, between layers, output).
        residual: skip connections between stacked layers of equal width.
        bidirectional: run every layer in both directions and concatenate (default True).
        pooling: how the sentence vector is made: ``"final"`` (last real step; forward last
            and backward first when bidirectional), ``"mean"`` or ``"max"`` over real tokens.

    Call arguments:
        inputs: int ``(batch, time)`` token ids, right-padded with 0.
        training: enables dropout.

    Returns:
        ``(states, sentence_vector)``: ``(batch, time, output_dim)`` with zeros at padded
        positions, and ``(batch, output_dim)``; ``output_dim = units`` (``2 * units`` when
        bidirectional).

    Example:

    >>> encoder = RNNEncoder(vocabulary_size=100, units=16, embedding_dim=8, pooling="mean")
    >>> states, vector = encoder(np.array([[5, 7, 9, 0]]))  # (1, 4, 32), (1, 32)
    """

    def __init__(
        self,
        vocabulary_size,
        cell="lstm",
        num_layers=1,
        units=64,
        embedding_dim=64,
        dropout=0.0,
        residual=False,
        bidirectional=True,
        pooling="final",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        self.embedding, (self.rnn,) = make_backbone(
            vocabulary_size,
            embedding_dim,
            cell=cell,
            units=units,
            num_layers=num_layers,
            dropout=dropout,
            residual=residual,
            bidirectional=bidirectional,
        )
        self.vocabulary_size = vocabulary_size
        self.cell = cell
        self.num_layers = num_layers
        self.units = units
        self.embedding_dim = embedding_dim
        self.dropout = dropout
        self.residual = residual
        self.bidirectional = bidirectional
        self.pooling = pooling

    @property
    def output_dim(self):
        return self.units * (2 if self.bidirectional else 1)

    def build(self, input_shape):
        build_backbone(self.embedding, [self.rnn], input_shape)
        self.built = True

    def encode(self, token_ids, training=False):
        """``(states, sentence_vector, mask)`` for int ``token_ids`` ``(batch, time)``."""
        mask = ops.not_equal(token_ids, 0)  # (batch, time)
        states, _ = run_backbone(self.embedding, self.rnn, token_ids, training=training)
        vector = pool(states, mask, self.pooling, self.bidirectional)  # (batch, output_dim)
        return states, vector, mask

    def call(self, inputs, training=False):
        states, vector, _ = self.encode(inputs, training=training)
        return states, vector

    def compute_mask(self, inputs, mask=None):
        return None

    def serving_outputs(self, token_ids):
        states, vector = self(token_ids, training=False)
        return {"states": states, "sentence_vector": vector}

    def get_config(self):
        config = super().get_config()
        config.update({**encoder_config(self), "pooling": self.pooling})
        return config
