"""Task heads on an ``RNNEncoder``: ``SequenceTagger`` (per token) and ``SentenceClassifier``."""

import keras
from keras import ops

from keras_rnnlm.data.fit_inputs import StallFreeFitMixin
from keras_rnnlm.task_models.encoder import RNNEncoder, encoder_config

_PACKAGE = "keras_rnnlm"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SequenceTagger(StallFreeFitMixin, keras.Model):
    """Tags every token: ``RNNEncoder -> Dropout -> Dense(num_tags)`` per position.

    Tag id 0 is padding: ``MaskedLanguageModelLoss`` and ``MaskedAccuracy`` (used by
    ``compile_tagger``) ignore positions whose tag is 0, so real tags are ``1..num_tags-1``.
    Bidirectional by default, since a tag usually depends on the right context too.

    Args:
        vocabulary_size: number of token ids, padding (0) included.
        num_tags: number of tag ids, padding tag 0 included.
        cell, num_layers, units, embedding_dim, dropout, residual, bidirectional: as in
            ``RNNEncoder``.

    Call arguments:
        inputs: int ``(batch, time)`` token ids, right-padded with 0.
        training: enables dropout.

    Returns:
        Tag logits ``(batch, time, num_tags)``.

    Example:

    >>> tagger = SequenceTagger(vocabulary_size=100, num_tags=3, units=16, embedding_dim=8)
    >>> compile_tagger(tagger)
    >>> logits = tagger(np.array([[5, 7, 0]]))  # (1, 3, 3)
    """

    def __init__(
        self,
        vocabulary_size,
        num_tags,
        cell="lstm",
        num_layers=1,
        units=64,
        embedding_dim=64,
        dropout=0.0,
        residual=False,
        bidirectional=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(num_tags, int) or num_tags < 2:
            raise ValueError(f"num_tags must be an int >= 2 (0 is padding), got {num_tags!r}.")
        self.num_tags = num_tags
        self.encoder = RNNEncoder(
            vocabulary_size,
            cell=cell,
            num_layers=num_layers,
            units=units,
            embedding_dim=embedding_dim,
            dropout=dropout,
            residual=residual,
            bidirectional=bidirectional,
            name="encoder",
        )
        for key, value in encoder_config(self.encoder).items():
            setattr(self, key, value)
        self.output_layer = keras.layers.Dense(num_tags, name="tag_logits")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.encoder.build(input_shape)
        if not self.output_layer.built:
            self.output_layer.build(input_shape + (self.encoder.output_dim,))
        self.built = True

    def call(self, inputs, training=False):
        states, _, _ = self.encoder.encode(inputs, training=training)  # (batch, time, d)
        return self.output_layer(states)  # (batch, time, num_tags)

    def compute_mask(self, inputs, mask=None):
        return None

    def predict_tags(self, token_ids):
        """Most likely real tag ``(batch, time)`` (never 0 at real tokens; 0 at padding)."""
        logits = self(token_ids, training=False)
        tags = ops.argmax(logits[..., 1:], axis=-1) + 1
        return ops.where(ops.not_equal(token_ids, 0), ops.cast(tags, "int32"), 0)

    def serving_outputs(self, token_ids):
        return {"logits": self(token_ids, training=False), "tags": self.predict_tags(token_ids)}

    def get_config(self):
        config = super().get_config()
        config.update({"num_tags": self.num_tags, **encoder_config(self)})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SentenceClassifier(StallFreeFitMixin, keras.Model):
    """Classifies a whole sequence: ``RNNEncoder -> sentence vector -> Dense(num_classes)``.

    Args:
        vocabulary_size: number of token ids, padding (0) included.
        num_classes: number of classes (labels ``0..num_classes-1``; no padding class).
        cell, num_layers, units, embedding_dim, dropout, residual, bidirectional, pooling: as
            in ``RNNEncoder`` (``pooling``: ``"final"``, ``"mean"`` or ``"max"``).

    Call arguments:
        inputs: int ``(batch, time)`` token ids, right-padded with 0.
        training: enables dropout.

    Returns:
        Class logits ``(batch, num_classes)``; padding never changes them.

    Example:

    >>> classifier = SentenceClassifier(vocabulary_size=100, num_classes=2, pooling="max")
    >>> compile_classifier(classifier)
    >>> logits = classifier(np.array([[5, 7, 0]]))  # (1, 2)
    """

    def __init__(
        self,
        vocabulary_size,
        num_classes,
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
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}.")
        self.num_classes = num_classes
        self.pooling = pooling
        self.encoder = RNNEncoder(
            vocabulary_size,
            cell=cell,
            num_layers=num_layers,
            units=units,
            embedding_dim=embedding_dim,
            dropout=dropout,
            residual=residual,
            bidirectional=bidirectional,
            pooling=pooling,
            name="encoder",
        )
        for key, value in encoder_config(self.encoder).items():
            setattr(self, key, value)
        self.vector_dropout = keras.layers.Dropout(dropout)
        self.output_layer = keras.layers.Dense(num_classes, name="class_logits")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        self.encoder.build(input_shape)
        if not self.output_layer.built:
            self.output_layer.build((input_shape[0], self.encoder.output_dim))
        self.built = True

    def call(self, inputs, training=False):
        _, vector, _ = self.encoder.encode(inputs, training=training)  # (batch, d)
        return self.output_layer(self.vector_dropout(vector, training=training))

    def serving_outputs(self, token_ids):
        logits = self(token_ids, training=False)
        return {"logits": logits, "probabilities": ops.softmax(logits, axis=-1)}

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "pooling": self.pooling, **encoder_config(self)}
        )
        return config
