"""Beam search: the ``num_beams`` best partial sequences by total log-probability."""

import keras
import tensorflow as tf

from keras_rnnlm.data.vocabulary import EOS_ID, PAD_ID
from keras_rnnlm.samplers.base import NEG, PACKAGE, Sampler, loop_length


@keras.saving.register_keras_serializable(package=PACKAGE)
class BeamSampler(Sampler):
    """Beam search: keep the ``num_beams`` best partial sequences by total log-probability.

    Every step expands each live beam by every token, and keeps the ``num_beams`` best
    candidates among all of them (finished beams compete with their frozen score). With
    ``length_penalty = a > 0`` candidates are ranked by ``log P / length ** a`` (``a = 1``: mean
    log-probability per token), which stops the search from favouring short sequences.
    ``num_beams=1`` is greedy decoding.

    Args:
        num_beams: beam width.
        length_penalty: exponent of the length normalisation (0: plain total log-probability).
        return_all_beams: return every beam, best first, ``(batch, num_beams, max_new_tokens)`` and
            their scores, instead of the best beam ``(batch, max_new_tokens)``.
        suppressed_token_ids: as for ``Sampler``. (``temperature`` and ``seed`` are unused.)

    Example:

    >>> generate(model, [[2, 17]], BeamSampler(num_beams=4), max_new_tokens=10)
    """

    def __init__(
        self,
        num_beams: int = 5,
        length_penalty: float = 0.0,
        return_all_beams: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}.")
        self.num_beams = int(num_beams)
        self.length_penalty = float(length_penalty)
        self.return_all_beams = return_all_beams

    def _normalise(self, scores, lengths):
        if self.length_penalty == 0:
            return scores
        lengths = tf.cast(tf.maximum(lengths, 1), scores.dtype)
        return scores / lengths**self.length_penalty

    def __call__(
        self,
        next_fn,
        logits,
        states,
        max_new_tokens=None,
        end_token_id=EOS_ID,
        seed=None,
        *,
        max_length=None,
    ):
        max_new_tokens = loop_length(max_new_tokens, max_length, type(self).__name__)
        k = self.num_beams
        end = -1 if end_token_id is None else int(end_token_id)
        batch_size = tf.shape(logits)[0]
        vocabulary_size = tf.shape(logits)[-1]

        def tile(x):  # (batch, ...) -> (batch * k, ...), each row repeated k times
            return tf.repeat(x, k, axis=0)

        logits = tile(logits)
        states = tf.nest.map_structure(tile, states)
        # Only beam 0 is alive at first, so the first step does not pick k copies of one token.
        scores = tf.tile(tf.constant([[0.0] + [NEG] * (k - 1)]), [batch_size, 1])  # (batch, k)
        finished = tf.zeros((batch_size, k), dtype="bool")
        lengths = tf.zeros((batch_size, k), dtype="int32")
        sequences = tf.zeros((batch_size, k, max_new_tokens), dtype="int32")
        only_padding = tf.where(tf.range(vocabulary_size) == PAD_ID, 0.0, NEG)  # (vocab,)

        def cond(t, logits, states, scores, finished, lengths, sequences):
            return tf.logical_and(t < max_new_tokens, tf.logical_not(tf.reduce_all(finished)))

        def body(t, logits, states, scores, finished, lengths, sequences):
            static = (logits, states, scores, finished, lengths, sequences)
            masked = tf.cast(self.mask_logits(logits), "float32")
            log_probs = tf.nn.log_softmax(masked, axis=-1)  # (batch * k, vocab)
            log_probs = tf.reshape(log_probs, [batch_size, k, vocabulary_size])
            # A finished beam can only be continued by padding, at no cost.
            log_probs = tf.where(finished[..., None], only_padding, log_probs)
            candidates = scores[..., None] + log_probs  # (batch, k, vocab)
            new_lengths = lengths + tf.cast(tf.logical_not(finished), "int32")  # (batch, k)
            ranking = self._normalise(candidates, new_lengths[..., None])
            flat = tf.reshape(ranking, [batch_size, k * vocabulary_size])
            _, best = tf.math.top_k(flat, k=k)  # (batch, k)
            beam = best // vocabulary_size  # (batch, k)
            token = best % vocabulary_size
            scores = tf.gather(
                tf.reshape(candidates, [batch_size, k * vocabulary_size]), best, batch_dims=1
            )
            was_finished = tf.gather(finished, beam, batch_dims=1)
            token = tf.where(was_finished, PAD_ID, token)
            lengths = tf.gather(new_lengths, beam, batch_dims=1)
            sequences = tf.gather(sequences, beam, batch_dims=1)  # (batch, k, max_new_tokens)
            at_t = tf.equal(tf.range(max_new_tokens), t)[None, None, :]
            sequences = tf.where(at_t, token[..., None], sequences)
            finished = tf.logical_or(was_finished, tf.equal(token, end))
            rows = tf.reshape(tf.range(batch_size)[:, None] * k + beam, [-1])  # (batch * k,)
            states = tf.nest.map_structure(lambda s: tf.gather(s, rows), states)
            logits, states = next_fn(tf.reshape(token, [-1]), states)
            updated = (logits, states, scores, finished, lengths, sequences)
            # Keep the static shapes the loop started with (reshapes by a dynamic batch lose them).
            updated = tf.nest.map_structure(
                lambda new, old: tf.ensure_shape(new, old.shape), updated, static
            )
            return (t + 1, *updated)

        _, _, _, scores, _, lengths, sequences = tf.while_loop(
            cond,
            body,
            (tf.constant(0), logits, states, scores, finished, lengths, sequences),
            maximum_iterations=max_new_tokens,
        )
        ranking = self._normalise(scores, lengths)
        ranking, order = tf.math.top_k(ranking, k=k)  # best first
        sequences = tf.gather(sequences, order, batch_dims=1)
        if self.return_all_beams:
            return sequences, ranking
        return sequences[:, 0]

    def get_config(self):
        return {
            **super().get_config(),
            "num_beams": self.num_beams,
            "length_penalty": self.length_penalty,
            "return_all_beams": self.return_all_beams,
        }
