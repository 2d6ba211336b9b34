"""``BidirectionalLanguageModel`` (ELMo-style), its targets, dataset and exact perplexity."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_rnnlm.backbone import backbone_config, build_backbone, embed, make_backbone
from keras_rnnlm.data.fit_inputs import StallFreeFitMixin
from keras_rnnlm.evaluation import cached_function, nll_sums, perplexity_summary
from keras_rnnlm.layers import reverse_padded
from keras_rnnlm.task_models.encoder import sequence_lengths

_PACKAGE = "keras_rnnlm"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BidirectionalLanguageModel(StallFreeFitMixin, keras.Model):
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
        self.embedding, (self.forward_rnn, self.backward_rnn) = make_backbone(
            vocabulary_size,
            embedding_dim,
            cell=cell,
            units=units,
            num_layers=num_layers,
            dropout=dropout,
            residual=residual,
            stack_names=("forward_rnn", "backward_rnn"),
        )
        self.vocabulary_size = vocabulary_size
        self.cell = cell
        self.num_layers = num_layers
        self.units = units
        self.embedding_dim = embedding_dim
        self.dropout = dropout
        self.residual = residual
        self.output_layer = keras.layers.Dense(vocabulary_size, name="logits")

    def build(self, input_shape):
        build_backbone(self.embedding, [self.forward_rnn, self.backward_rnn], input_shape)
        if not self.output_layer.built:
            self.output_layer.build(tuple(input_shape) + (self.units,))
        self.built = True

    def representations(self, token_ids, training=False):
        """Per-token ``(forward_states, backward_states)``, each ``(batch, time, units)``, in
        input order; forward at ``t`` has read ``x_1..x_t``, backward ``x_t..x_n``."""
        x, mask = embed(self.embedding, token_ids)  # (batch, time, embedding_dim), (batch, time)
        lengths = sequence_lengths(token_ids)  # (batch,)
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
        config.update(backbone_config(self))
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


def evaluate_bidirectional_perplexity(model, dataset) -> dict:
    """Exact perplexity per direction over ``dataset`` of ``(inputs, (fwd, bwd targets))``.

    Returns ``{"forward_perplexity", "backward_perplexity", "tokens"}`` with each perplexity
    ``exp(total NLL / total real targets)``.
    """

    def build():
        def sums(inputs, forward_targets, backward_targets):
            forward_logits, backward_logits = model(inputs, training=False)
            return (
                nll_sums(forward_targets, forward_logits),
                nll_sums(backward_targets, backward_logits),
            )

        return sums

    fn = cached_function(model, "bidirectional", build, reduce_retracing=True)
    totals = np.zeros(4)
    for inputs, (forward_targets, backward_targets) in dataset:
        forward, backward = fn(inputs, forward_targets, backward_targets)
        totals += [
            float(tf.reduce_sum(p[k])) for p in (forward, backward) for k in ("nll", "tokens")
        ]
    if totals[1] == 0:
        raise ValueError("The data holds no real target token.")
    forward = perplexity_summary(totals[0], totals[1])
    backward = perplexity_summary(totals[2], totals[3])
    return {
        "forward_perplexity": forward["perplexity"],
        "backward_perplexity": backward["perplexity"],
        "tokens": forward["tokens"],
    }
