"""Other uses of RNNs, built from the same layers as the language model.

* ``RNNEncoder``: token ids -> per-token states and a sentence vector (final state, or mean /
  max pooling over the real tokens). It may be bidirectional: it sees the whole input.
* ``SequenceTagger``: encoder -> per-token softmax over tags (tag 0 = padding, never counted).
* ``SentenceClassifier``: encoder -> sentence vector -> softmax over classes.
* ``BidirectionalLanguageModel`` (ELMo-style): a forward LM and a backward LM sharing the
  embedding, trained jointly. The forward direction predicts ``x_{t+1}`` from ``x_1..x_t``, the
  backward direction predicts ``x_{t-1}`` from ``x_t..x_n``; neither ever sees the token it
  predicts (unlike a ``Bidirectional`` layer, which cannot be a language model).

Every model reads int token ids ``(batch, time)`` right-padded with 0 and masks the padding in
the recurrence, so padding never changes a real position's output. ``export_task_model`` saves
any of them as a TensorFlow SavedModel with a ``serving_default`` signature.
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_rnnlm.cells import CELLS
from keras_rnnlm.layers import StackedRecurrent, reverse_padded
from keras_rnnlm.losses import MaskedLanguageModelLoss, token_nll
from keras_rnnlm.metrics import MaskedAccuracy, Perplexity

_PACKAGE = "keras_rnnlm"
POOLINGS = ("final", "mean", "max")


def _check_common(vocabulary_size, cell, dropout):
    if not isinstance(vocabulary_size, int) or vocabulary_size < 2:
        raise ValueError(f"vocabulary_size must be an int >= 2, got {vocabulary_size!r}.")
    if cell not in CELLS:
        raise ValueError(f"Unknown cell {cell!r}; expected one of {sorted(CELLS)}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")


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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RNNEncoder(keras.Model):
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
        _check_common(vocabulary_size, cell, dropout)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        self.vocabulary_size = vocabulary_size
        self.cell = cell
        self.num_layers = num_layers
        self.units = units
        self.embedding_dim = embedding_dim
        self.dropout = dropout
        self.residual = residual
        self.bidirectional = bidirectional
        self.pooling = pooling
        self.embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")
        self.rnn = StackedRecurrent(
            cell=cell,
            units=units,
            num_layers=num_layers,
            dropout=dropout,
            residual=residual,
            bidirectional=bidirectional,
            name="rnn",
        )

    @property
    def output_dim(self):
        return self.units * (2 if self.bidirectional else 1)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if not self.embedding.built:
            self.embedding.build(input_shape)
        if not self.rnn.built:
            self.rnn.build(input_shape + (self.embedding_dim,))
        self.built = True

    def encode(self, token_ids, training=False):
        """``(states, sentence_vector, mask)`` for int ``token_ids`` ``(batch, time)``."""
        mask = ops.not_equal(token_ids, 0)  # (batch, time)
        x = self.embedding(token_ids)  # dropout on it is StackedRecurrent's first dropout
        states, _ = self.rnn(x, mask=mask, training=training)  # (batch, time, output_dim)
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
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "cell": self.cell,
                "num_layers": self.num_layers,
                "units": self.units,
                "embedding_dim": self.embedding_dim,
                "dropout": self.dropout,
                "residual": self.residual,
                "bidirectional": self.bidirectional,
                "pooling": self.pooling,
            }
        )
        return config


def _encoder_config(model):
    return {
        "vocabulary_size": model.vocabulary_size,
        "cell": model.cell,
        "num_layers": model.num_layers,
        "units": model.units,
        "embedding_dim": model.embedding_dim,
        "dropout": model.dropout,
        "residual": model.residual,
        "bidirectional": model.bidirectional,
    }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SequenceTagger(keras.Model):
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
        for key, value in _encoder_config(self.encoder).items():
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
        config.update({"num_tags": self.num_tags, **_encoder_config(self)})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SentenceClassifier(keras.Model):
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
        for key, value in _encoder_config(self.encoder).items():
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
            {"num_classes": self.num_classes, "pooling": self.pooling, **_encoder_config(self)}
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BidirectionalLanguageModel(keras.Model):
    """A forward and a backward language model trained jointly (ELMo, Peters et al. 2018).

    Both directions share the token embedding and the output (softmax) layer, and each has its
    own ``StackedRecurrent``. The forward stack reads ``x_1..x_n`` left to right; the backward
    stack reads each row reversed within its length (``reverse_padded``: from the last real
    token to the first, padding still at the end) and its outputs are put back in input order.
    At position ``t`` the forward logits predict ``x_{t+1}`` from ``x_1..x_t`` and the backward
    logits predict ``x_{t-1}`` from ``x_t..x_n``: no direction ever sees the token it predicts.
    ``bidirectional_lm_targets`` builds both target sequences from the inputs.

    Args:
        vocabulary_size: number of token ids, padding (0) included.
        cell: ``"lstm"`` (default), ``"gru"`` or ``"simple_rnn"``.
        num_layers: recurrent layers per direction.
        units: hidden size of every layer.
        embedding_dim: size of the token embeddings.
        dropout: rate on the non-recurrent connections.
        residual: skip connections between stacked layers.

    Call arguments:
        inputs: int ``(batch, time)`` token ids (``<bos> w_1 .. w_n <eos>``), right-padded with 0.
        training: enables dropout.

    Returns:
        ``(forward_logits, backward_logits)``, each ``(batch, time, vocabulary_size)`` in input
        order. Use ``representations`` for the concatenated per-token states (ELMo features).

    Example:

    >>> bilm = BidirectionalLanguageModel(vocabulary_size=100, units=16, embedding_dim=16)
    >>> compile_bidirectional_lm(bilm)
    >>> x = np.array([[2, 17, 5, 3, 0]])
    >>> bilm.fit(x, bidirectional_lm_targets(x))
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_common(vocabulary_size, cell, dropout)
        self.vocabulary_size = vocabulary_size
        self.cell = cell
        self.num_layers = num_layers
        self.units = units
        self.embedding_dim = embedding_dim
        self.dropout = dropout
        self.residual = residual
        self.embedding = keras.layers.Embedding(vocabulary_size, embedding_dim, name="embedding")
        common = dict(
            cell=cell, units=units, num_layers=num_layers, dropout=dropout, residual=residual
        )
        self.forward_rnn = StackedRecurrent(**common, name="forward_rnn")
        self.backward_rnn = StackedRecurrent(**common, name="backward_rnn")
        self.output_layer = keras.layers.Dense(vocabulary_size, name="logits")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if not self.embedding.built:
            self.embedding.build(input_shape)
        for rnn in (self.forward_rnn, self.backward_rnn):
            if not rnn.built:
                rnn.build(input_shape + (self.embedding_dim,))
        if not self.output_layer.built:
            self.output_layer.build(input_shape + (self.units,))
        self.built = True

    def representations(self, token_ids, training=False):
        """Per-token ``(forward_states, backward_states)``, each ``(batch, time, units)``, in
        input order; forward at ``t`` has read ``x_1..x_t``, backward ``x_t..x_n``."""
        mask = ops.not_equal(token_ids, 0)  # (batch, time)
        lengths = sequence_lengths(token_ids)  # (batch,)
        x = self.embedding(token_ids)  # dropout on it is StackedRecurrent's first dropout
        forward, _ = self.forward_rnn(x, mask=mask, training=training)  # (batch, time, units)
        reversed_x = reverse_padded(x, lengths)  # last real token first, padding at the end
        backward, _ = self.backward_rnn(reversed_x, mask=mask, training=training)
        return forward, reverse_padded(backward, lengths)  # back to input order

    def call(self, inputs, training=False):
        forward, backward = self.representations(inputs, training=training)
        return self.output_layer(forward), self.output_layer(backward)

    def compute_mask(self, inputs, mask=None):
        return None

    def serving_outputs(self, token_ids):
        forward, backward = self(token_ids, training=False)
        return {"forward_logits": forward, "backward_logits": backward}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "cell": self.cell,
                "num_layers": self.num_layers,
                "units": self.units,
                "embedding_dim": self.embedding_dim,
                "dropout": self.dropout,
                "residual": self.residual,
            }
        )
        return config


def bidirectional_lm_targets(token_ids):
    """``(forward_targets, backward_targets)`` for right-padded ``token_ids`` ``(batch, time)``.

    Forward target at ``t`` is ``x_{t+1}`` (0 after the last real token); backward target at
    ``t`` is ``x_{t-1}`` (0 at position 0). Works on NumPy arrays and tensors.
    """
    ids = ops.convert_to_tensor(token_ids, dtype="int32")
    zeros = ops.zeros_like(ids[:, :1])
    forward = ops.concatenate([ids[:, 1:], zeros], axis=1)
    backward = ops.concatenate([zeros, ids[:, :-1]], axis=1)
    backward = ops.where(ops.not_equal(ids, 0), backward, 0)  # nothing to predict at padding
    if isinstance(token_ids, np.ndarray):
        return np.asarray(forward), np.asarray(backward)
    return forward, backward


def bidirectional_lm_dataset(sequences: tf.data.Dataset) -> tf.data.Dataset:
    """Map a dataset of padded ``(inputs, ...)`` or plain id batches to
    ``(inputs, (forward_targets, backward_targets))``.

    From ``sentence_dataset`` (whose inputs are ``<bos> w_1 .. w_n`` and targets ``w_1 .. <eos>``)
    the full sequence ``<bos> .. <eos>`` is rebuilt so both directions see every token.
    """

    def to_bilm(*batch):
        if len(batch) == 1:
            ids = batch[0]
        else:
            inputs, targets = batch[0], batch[1]
            last = tf.gather(targets, sequence_lengths(inputs)[:, None] - 1, batch_dims=1)
            ids = tf.concat([inputs, tf.zeros_like(inputs[:, :1])], axis=1)
            # write the final target (<eos>) after the last real input
            positions = tf.range(tf.shape(ids)[1])[None, :]
            ids = tf.where(positions == sequence_lengths(inputs)[:, None], last, ids)
        return ids, bidirectional_lm_targets(ids)

    return sequences.map(to_bilm)


def compile_tagger(model, optimizer="adam", learning_rate=3e-3, clip_norm=5.0, **kwargs):
    """Masked cross-entropy over real tags and ``MaskedAccuracy`` (tag 0 = padding)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=clip_norm)
        if optimizer == "adam"
        else optimizer,
        loss=MaskedLanguageModelLoss(name="masked_tag_loss"),
        metrics=[MaskedAccuracy()],
        **kwargs,
    )
    return model


def compile_classifier(model, optimizer="adam", learning_rate=3e-3, clip_norm=5.0, **kwargs):
    """Sparse categorical cross-entropy on logits and accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=clip_norm)
        if optimizer == "adam"
        else optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        **kwargs,
    )
    return model


def compile_bidirectional_lm(model, optimizer="adam", learning_rate=3e-3, clip_norm=5.0, **kwargs):
    """Joint loss: masked LM loss of the forward plus that of the backward direction, with a
    ``Perplexity`` per direction."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=clip_norm)
        if optimizer == "adam"
        else optimizer,
        loss=[
            MaskedLanguageModelLoss(name="forward_lm_loss"),
            MaskedLanguageModelLoss(name="backward_lm_loss"),
        ],
        metrics=[[Perplexity(name="forward_perplexity")], [Perplexity(name="backward_perplexity")]],
        **kwargs,
    )
    return model


def evaluate_bidirectional_perplexity(model, dataset) -> dict:
    """Exact perplexity per direction over ``dataset`` of ``(inputs, (fwd, bwd targets))``.

    Returns ``{"forward_perplexity", "backward_perplexity", "tokens"}`` with each perplexity
    ``exp(total NLL / total real targets)``.
    """

    @tf.function
    def sums(inputs, forward_targets, backward_targets):
        forward_logits, backward_logits = model(inputs, training=False)
        out = []
        for targets, logits in (
            (forward_targets, forward_logits),
            (backward_targets, backward_logits),
        ):
            nll, mask = token_nll(targets, logits)
            out += [
                tf.reduce_sum(tf.cast(nll, tf.float64)),
                tf.reduce_sum(tf.cast(mask, tf.float64)),
            ]
        return out

    totals = np.zeros(4)
    for inputs, (forward_targets, backward_targets) in dataset:
        totals += np.array([float(v) for v in sums(inputs, forward_targets, backward_targets)])
    if totals[1] == 0:
        raise ValueError("The data holds no real target token.")
    return {
        "forward_perplexity": float(np.exp(totals[0] / totals[1])),
        "backward_perplexity": float(np.exp(totals[2] / totals[3])),
        "tokens": int(totals[1]),
    }


class TaskModelServer(tf.Module):
    """The tf.Module saved by ``export_task_model``: the model and one serving signature."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.serve = tf.function(
            lambda token_ids: model.serving_outputs(token_ids),
            input_signature=[tf.TensorSpec((None, None), tf.int32, name="token_ids")],
        )


def export_task_model(model, export_dir):
    """Save ``model`` (any model of this module, built) as a SavedModel.

    The ``serving_default`` signature takes int32 ``token_ids`` ``(batch, time)`` (0 = padding)
    and returns the model's ``serving_outputs`` (e.g. ``logits`` and ``tags`` for a tagger).
    Reload with ``tf.saved_model.load(export_dir).signatures["serving_default"]``; it needs
    TensorFlow only, not Keras or this package.
    """
    if not model.built:
        raise ValueError("The model is not built: call it on data or train it before exporting.")
    server = TaskModelServer(model)
    tf.saved_model.save(server, str(export_dir), signatures={"serving_default": server.serve})
    return export_dir
