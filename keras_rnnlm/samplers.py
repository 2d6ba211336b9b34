"""Text generation with O(1)-per-token stateful decoding: greedy, sampling, top-k, top-p, beam.

An RNN summarises its whole prefix in its recurrent state, so generation never needs to re-read
the prefix (unlike a Transformer without a cache, or a naive loop that calls ``model(prefix)``
for every new token):

* ``prefill(model, prompt_ids)`` reads the (right-padded) prompts once and returns the logits of
  the first new token and every row's states after its last real prompt token.
* ``decode_step(model, token_ids, states)`` feeds one token per row through the cells (no time
  loop) and returns the next logits and states: constant cost per generated token.

The samplers follow the keras-hub design: the base ``Sampler`` owns the generation loop, a
bounded ``tf.while_loop`` (``maximum_iterations=max_length``) with fixed-shape loop variables,
so the whole of ``generate`` compiles with ``tf.function(jit_compile=True)``; each strategy only
overrides ``get_next_token(probabilities, seed)``. ``BeamSampler`` overrides the loop itself.

Randomness is stateless (``tf.random.stateless_categorical`` seeded with ``(seed, step)``): the
same seed gives the same samples, in eager, graph or XLA mode alike within one mode.
"""

import random
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_rnnlm.data.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from keras_rnnlm.layers import _as_list

_PACKAGE = "keras_rnnlm"
_NEG = -1e9  # "minus infinity" that keeps arithmetic finite (no inf - inf)

#: Ids a sampler never emits unless told otherwise: padding, <unk> and <bos>.
DEFAULT_SUPPRESSED_IDS = (PAD_ID, UNK_ID, BOS_ID)


def _check_model(model):
    if getattr(model, "stateful", False):
        raise ValueError(
            "Generation needs a stateless model (the state is carried explicitly); use "
            "keras_rnnlm.runs.stateless_copy(model)."
        )
    if getattr(model.rnn, "bidirectional", False):
        raise ValueError("A bidirectional model is not a language model and cannot generate.")
    if not model.built:
        model.build((None, None))


def prefill(model, prompt_ids):
    """Read right-padded prompts once: the first new token's logits and the states after them.

    Args:
        model: an ``RNNLanguageModel`` (stateless; custom or built-in recurrent layers).
        prompt_ids: int ``(batch, time)``, each row a prompt (normally starting with ``<bos>``)
            right-padded with 0; every row needs at least one real token.

    Returns:
        ``(logits, states)``: ``(batch, vocabulary_size)`` logits of the token that follows
        each row's last real token, and the states (per layer, a list of ``(batch, units)``).

    Example:

    >>> logits, states = prefill(model, np.array([[2, 7, 9], [2, 5, 0]]))
    """
    prompt_ids = tf.convert_to_tensor(prompt_ids, dtype="int32")  # (batch, time)
    mask = tf.not_equal(prompt_ids, PAD_ID)  # (batch, time)
    x = model.embedding(prompt_ids)  # (batch, time, embedding_dim)
    hidden, states = model.rnn(x, mask=mask, training=False)  # (batch, time, units)
    lengths = tf.reduce_sum(tf.cast(mask, "int32"), axis=1)  # (batch,)
    last = tf.gather(hidden, tf.maximum(lengths - 1, 0), batch_dims=1)  # (batch, units)
    return model.logits_from_hidden(last), [_as_list(s) for s in states]


def decode_step(model, token_ids, states):
    """One decoding step: feed one token per row from the carried states (no time loop).

    Equivalent to ``model.forward(token_ids[:, None], initial_state=states)`` but calls the
    cells directly (``RNNLanguageModel.step``), so its cost does not depend on how many tokens
    came before.

    Args:
        model: an ``RNNLanguageModel``.
        token_ids: int ``(batch,)``.
        states: per layer, the list of ``(batch, units)`` states (from ``prefill`` or a
            previous step).

    Returns:
        ``(logits, new_states)``: ``(batch, vocabulary_size)`` and the same structure as
        ``states``.

    Example:

    >>> logits, states = prefill(model, prompt_ids)
    >>> logits, states = decode_step(model, ops.argmax(logits, -1), states)
    """
    return model.step(token_ids, [_as_list(layer_states) for layer_states in states])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Sampler:
    """Base sampler: the bounded generation loop; subclasses choose the next token.

    The loop starts from the logits and states that ``prefill`` returns, and at every step
    turns the logits into probabilities (``compute_probabilities``: suppressed ids removed,
    temperature applied), picks one token per row (``get_next_token``), writes it, and feeds it
    to ``next_fn`` for the next logits. A row stops after it emits ``end_token_id`` (later
    positions are 0); the loop stops when every row has stopped or after ``max_length`` tokens.

    Args:
        temperature: divides the logits before the softmax (< 1 sharper, > 1 flatter).
        seed: int seed for the random strategies; the same seed gives the same samples. None
            draws a fresh seed per call.
        suppressed_token_ids: ids never emitted (default padding, ``<unk>`` and ``<bos>``);
            pass ``(PAD_ID, BOS_ID)`` to allow ``<unk>``.

    Call arguments:
        next_fn: ``next_fn(token_ids, states) -> (logits, states)``, one decoding step
            (``decode_step`` bound to a model).
        logits: ``(batch, vocabulary_size)``, the distribution of the first new token.
        states: the recurrent states after the prompt (any nested structure of tensors).
        max_length: int, maximum number of generated tokens (the prompt is not counted).
        end_token_id: id that ends a row (default ``<eos>``); None never stops early.
        seed: optional int32 ``(2,)`` tensor overriding ``self.seed`` (used by ``generate``).

    Returns:
        int32 ``(batch, max_length)``: the generated ids, ``end_token_id`` included, 0 after.

    Example:

    >>> sampler = TopKSampler(k=10, seed=1)
    >>> tokens = generate(model, [[2, 17, 5]], sampler, max_length=20)
    """

    def __init__(
        self,
        temperature: float = 1.0,
        seed: int | None = None,
        suppressed_token_ids: Sequence[int] = DEFAULT_SUPPRESSED_IDS,
    ):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = temperature
        self.seed = seed
        self.suppressed_token_ids = tuple(int(i) for i in suppressed_token_ids)

    def mask_logits(self, logits):
        """Set the logits of ``suppressed_token_ids`` to a very large negative value."""
        if not self.suppressed_token_ids:
            return logits
        vocabulary_size = tf.shape(logits)[-1]
        suppressed = tf.reduce_any(
            tf.equal(
                tf.range(vocabulary_size)[:, None],
                tf.constant(self.suppressed_token_ids, dtype="int32")[None, :],
            ),
            axis=-1,
        )  # (vocabulary_size,)
        return tf.where(suppressed, tf.cast(_NEG, logits.dtype), logits)

    def compute_probabilities(self, logits):
        """``softmax(mask_logits(logits) / temperature)`` in float32, ``(batch, vocab)``."""
        logits = tf.cast(self.mask_logits(logits), "float32")
        return tf.nn.softmax(logits / self.temperature, axis=-1)

    def get_next_token(self, probabilities, seed):
        """Pick one id per row from ``(batch, vocab)`` probabilities; ``seed`` is ``(2,)``."""
        raise NotImplementedError

    def resolve_seed(self):
        """The base seed of one call: ``self.seed`` or a fresh random one."""
        seed = self.seed if self.seed is not None else random.randrange(2**31 - 1)
        return tf.constant([seed, 0], dtype="int32")

    def __call__(self, next_fn, logits, states, max_length, end_token_id=EOS_ID, seed=None):
        if seed is None:
            seed = self.resolve_seed()
        seed = tf.cast(seed, "int32")
        batch_size = tf.shape(logits)[0]
        end = -1 if end_token_id is None else int(end_token_id)
        tokens = tf.zeros((max_length, batch_size), dtype="int32")  # (max_length, batch)
        done = tf.zeros((batch_size,), dtype="bool")

        def cond(t, logits, states, tokens, done):
            return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(done)))

        def body(t, logits, states, tokens, done):
            probabilities = self.compute_probabilities(logits)  # (batch, vocab)
            step_seed = tf.stack([seed[0], seed[1] + t])
            next_token = tf.cast(self.get_next_token(probabilities, step_seed), "int32")
            next_token = tf.where(done, PAD_ID, next_token)  # (batch,)
            tokens = tf.tensor_scatter_nd_update(tokens, [[t]], next_token[None, :])
            done = tf.logical_or(done, tf.equal(next_token, end))
            logits, states = next_fn(next_token, states)
            return t + 1, logits, states, tokens, done

        _, _, _, tokens, _ = tf.while_loop(
            cond,
            body,
            (tf.constant(0), logits, states, tokens, done),
            maximum_iterations=max_length,
        )
        return tf.transpose(tokens)  # (batch, max_length)

    def get_config(self):
        return {
            "temperature": self.temperature,
            "seed": self.seed,
            "suppressed_token_ids": list(self.suppressed_token_ids),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _sample(log_weights, seed):
    """One categorical draw per row from unnormalised log-weights ``(batch, n)``."""
    return tf.random.stateless_categorical(log_weights, 1, seed=seed, dtype="int32")[:, 0]


def _log(probabilities):
    return tf.where(probabilities > 0, tf.math.log(probabilities), float("-inf"))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GreedySampler(Sampler):
    """Always the most probable token (deterministic; ``temperature`` has no effect).

    Example:

    >>> generate(model, [[2, 17]], GreedySampler(), max_length=10)
    """

    def get_next_token(self, probabilities, seed):
        return tf.argmax(probabilities, axis=-1, output_type="int32")


@keras.saving.register_keras_serializable(package=_PACKAGE)
class RandomSampler(Sampler):
    """Ancestral sampling from the whole (temperature-scaled) distribution.

    Example:

    >>> generate(model, [[2, 17]], RandomSampler(temperature=0.8, seed=3), max_length=10)
    """

    def get_next_token(self, probabilities, seed):
        return _sample(_log(probabilities), seed)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TopKSampler(Sampler):
    """Sample among the ``k`` most probable tokens only (renormalised).

    Args:
        k: number of candidates kept per step.
        **kwargs: ``Sampler`` arguments (``temperature``, ``seed``, ``suppressed_token_ids``).

    Example:

    >>> generate(model, [[2, 17]], TopKSampler(k=5, seed=0), max_length=10)
    """

    def __init__(self, k: int = 5, **kwargs):
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        self.k = int(k)

    def get_next_token(self, probabilities, seed):
        k = min(self.k, probabilities.shape[-1] or self.k)
        top_probabilities, top_ids = tf.math.top_k(probabilities, k=k)  # (batch, k)
        choice = _sample(_log(top_probabilities), seed)  # (batch,)
        return tf.gather(top_ids, choice, batch_dims=1)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TopPSampler(Sampler):
    """Nucleus sampling: sample among the smallest set of top tokens with mass >= ``p``.

    Tokens are sorted by probability; a token is kept when the mass of the tokens before it
    is below ``p`` (so the most probable token is always kept and the token that crosses
    ``p`` is included).

    Args:
        p: nucleus mass in ``(0, 1]``.
        k: optional cap on the nucleus size (sorts only the ``k`` best; faster on big vocabularies).
        **kwargs: ``Sampler`` arguments.

    Example:

    >>> generate(model, [[2, 17]], TopPSampler(p=0.9, seed=0), max_length=10)
    """

    def __init__(self, p: float = 0.9, k: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"p must be in (0, 1], got {p}.")
        self.p = float(p)
        self.k = k

    def get_next_token(self, probabilities, seed):
        k = self.k or probabilities.shape[-1] or tf.shape(probabilities)[-1]
        sorted_probabilities, sorted_ids = tf.math.top_k(probabilities, k=k)  # (batch, k)
        mass_before = tf.cumsum(sorted_probabilities, axis=-1, exclusive=True)
        kept = tf.where(mass_before < self.p, sorted_probabilities, 0.0)
        choice = _sample(_log(kept), seed)  # (batch,)
        return tf.gather(sorted_ids, choice, batch_dims=1)

    def get_config(self):
        return {**super().get_config(), "p": self.p, "k": self.k}


@keras.saving.register_keras_serializable(package=_PACKAGE)
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
        return_all_beams: return every beam, best first, ``(batch, num_beams, max_length)`` and
            their scores, instead of the best beam ``(batch, max_length)``.
        suppressed_token_ids: as for ``Sampler``. (``temperature`` and ``seed`` are unused.)

    Example:

    >>> generate(model, [[2, 17]], BeamSampler(num_beams=4), max_length=10)
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

    def __call__(self, next_fn, logits, states, max_length, end_token_id=EOS_ID, seed=None):
        k = self.num_beams
        end = -1 if end_token_id is None else int(end_token_id)
        batch_size = tf.shape(logits)[0]
        vocabulary_size = tf.shape(logits)[-1]

        def tile(x):  # (batch, ...) -> (batch * k, ...), each row repeated k times
            return tf.repeat(x, k, axis=0)

        logits = tile(logits)
        states = tf.nest.map_structure(tile, states)
        # Only beam 0 is alive at first, so the first step does not pick k copies of one token.
        scores = tf.tile(tf.constant([[0.0] + [_NEG] * (k - 1)]), [batch_size, 1])  # (batch, k)
        finished = tf.zeros((batch_size, k), dtype="bool")
        lengths = tf.zeros((batch_size, k), dtype="int32")
        sequences = tf.zeros((batch_size, k, max_length), dtype="int32")
        only_padding = tf.where(tf.range(vocabulary_size) == PAD_ID, 0.0, _NEG)  # (vocab,)

        def cond(t, logits, states, scores, finished, lengths, sequences):
            return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(finished)))

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
            sequences = tf.gather(sequences, beam, batch_dims=1)  # (batch, k, max_length)
            at_t = tf.equal(tf.range(max_length), t)[None, None, :]
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
            maximum_iterations=max_length,
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


SAMPLERS = {
    "greedy": GreedySampler,
    "sample": RandomSampler,
    "random": RandomSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
    "beam": BeamSampler,
}


def get_sampler(identifier, **kwargs) -> Sampler:
    """A ``Sampler`` from an instance, a name (``greedy|sample|top_k|top_p|beam``) or a config."""
    if isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if identifier not in SAMPLERS:
        raise ValueError(f"Unknown sampler {identifier!r}; expected one of {sorted(SAMPLERS)}.")
    return SAMPLERS[identifier](**kwargs)


def pad_prompts(prompts: Sequence[Sequence[int]]) -> np.ndarray:
    """Right-pad id lists with 0 into an int32 ``(batch, longest)`` array."""
    prompts = [list(p) for p in prompts]
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("Every prompt needs at least one token (normally <bos>).")
    out = np.zeros((len(prompts), max(len(p) for p in prompts)), dtype=np.int32)
    for row, ids in enumerate(prompts):
        out[row, : len(ids)] = ids
    return out


def make_generate_fn(
    model,
    sampler="greedy",
    max_length: int = 32,
    end_token_id: int | None = EOS_ID,
    jit_compile: bool = False,
) -> Callable:
    """A compiled ``fn(prompt_ids, seed) -> tokens`` for repeated generation calls.

    Args:
        model: an ``RNNLanguageModel`` (stateless).
        sampler: a ``Sampler`` or a name for ``get_sampler``.
        max_length: maximum number of generated tokens (prompt excluded).
        end_token_id: stop token (default ``<eos>``); None generates exactly ``max_length``.
        jit_compile: compile the prefill and the whole loop with XLA (one compilation per
            prompt shape).

    Returns:
        A ``tf.function`` taking int32 ``(batch, time)`` right-padded prompts and an int32
        ``(2,)`` seed, returning what the sampler returns (see ``Sampler``/``BeamSampler``).

    Example:

    >>> fn = make_generate_fn(model, GreedySampler(), max_length=20, jit_compile=True)
    >>> tokens = fn(pad_prompts([[2, 5, 9]]), tf.constant([0, 0]))
    """
    _check_model(model)
    sampler = get_sampler(sampler)
    max_length = int(max_length)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}.")

    def next_fn(token_ids, states):
        return decode_step(model, token_ids, states)

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def generate_fn(prompt_ids, seed):
        logits, states = prefill(model, prompt_ids)
        return sampler(next_fn, logits, states, max_length, end_token_id, seed=seed)

    return generate_fn


def generate(
    model,
    prompt_ids,
    sampler="greedy",
    max_length: int = 32,
    end_token_id: int | None = EOS_ID,
    jit_compile: bool = False,
) -> np.ndarray:
    """Generate continuations of a batch of prompts of different lengths.

    Args:
        model: an ``RNNLanguageModel`` (stateless; any cell, stacked, tied, built-in layers).
        prompt_ids: a list of id lists (each normally ``[BOS_ID] + vocabulary.encode(text)``)
            or an int ``(batch, time)`` array right-padded with 0.
        sampler: a ``Sampler`` or ``"greedy"|"sample"|"top_k"|"top_p"|"beam"``.
        max_length: maximum number of generated tokens (prompt excluded).
        end_token_id: a row stops after this id (default ``<eos>``, kept in the output);
            None never stops early.
        jit_compile: run prefill and loop under XLA.

    Returns:
        int32 numpy ``(batch, max_length)`` of generated ids, 0 after a row's end token
        (``BeamSampler(return_all_beams=True)``: ``(sequences, scores)`` with sequences
        ``(batch, num_beams, max_length)``).

    Example:

    >>> ids = generate(model, [[2, 17, 5], [2]], TopPSampler(p=0.9, seed=0), max_length=20)
    """
    sampler = get_sampler(sampler)
    if not isinstance(prompt_ids, np.ndarray):
        prompt_ids = pad_prompts(prompt_ids)
    fn = make_generate_fn(model, sampler, max_length, end_token_id, jit_compile)
    result = fn(tf.constant(prompt_ids, dtype="int32"), sampler.resolve_seed())
    return tf.nest.map_structure(lambda x: x.numpy(), result)


def generate_text(
    model,
    vocabulary,
    prompts: Sequence[str],
    sampler="greedy",
    max_length: int = 32,
    num_samples: int = 1,
    jit_compile: bool = False,
) -> list[list[str]]:
    """Continue text prompts; for each prompt, ``num_samples`` continuations (text only).

    A prompt is encoded as ``[vocabulary.start_id] + vocabulary.encode(prompt)``, like a
    training sentence (``<bos>``, or ``<eos>`` for stream-trained models, which also do not stop
    at ``<eos>``: for them it separates sentences and decodes as a line break).
    With a ``BeamSampler`` the ``num_samples`` best beams are returned (``num_samples`` must
    not exceed ``num_beams``); other samplers draw ``num_samples`` rows per prompt in one batch.

    Returns:
        For every prompt, a list of ``num_samples`` generated continuations (special tokens
        dropped).

    Example:

    >>> generate_text(model, vocab, ["the students opened their"], "top_k", num_samples=2)
    """
    sampler = get_sampler(sampler)
    encoded = [[vocabulary.start_id, *vocabulary.encode(p)] for p in prompts]
    end_token_id = None if vocabulary.separates_with_eos else EOS_ID
    if isinstance(sampler, BeamSampler):
        if num_samples > sampler.num_beams:
            raise ValueError(
                f"num_samples ({num_samples}) must not exceed the beam width ({sampler.num_beams})."
            )
        beams = BeamSampler.from_config({**sampler.get_config(), "return_all_beams": True})
        sequences, _ = generate(model, encoded, beams, max_length, end_token_id, jit_compile)
        return [[vocabulary.decode(s) for s in row[:num_samples]] for row in sequences]
    repeated = [ids for ids in encoded for _ in range(num_samples)]
    tokens = generate(model, repeated, sampler, max_length, end_token_id, jit_compile)
    texts = [vocabulary.decode(row) for row in tokens]
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]
