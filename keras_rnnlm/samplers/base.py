"""The generation loop every sampler shares, incremental decoding, and the explicit random draw.

An RNN summarises its whole prefix in its recurrent state, so generation never needs to re-read
the prefix (unlike a Transformer without a cache, or a naive loop that calls ``model(prefix)``
for every new token):

* ``prefill(model, prompt_ids)`` reads the (right-padded) prompts once and returns the logits of
  the first new token only (no full-vocabulary logits at the prompt positions) and every row's
  states after its last real prompt token.
* ``decode_step(model, token_ids, states)`` feeds one token per row through the cells (no time
  loop) and returns the next logits and states: constant cost per generated token.

The base ``Sampler`` owns the loop, a bounded ``tf.while_loop`` with fixed-shape loop variables,
so the whole of generation compiles with ``tf.function(jit_compile=True)``; each strategy only
overrides ``get_next_token(probabilities, seed)`` (keras-hub's design). ``BeamSampler`` overrides
the loop itself. The SavedModel export runs these same classes, with tensor-valued temperature,
``k``, ``p`` and seed.

Randomness is explicit: ``draw`` turns a stateless uniform into a token by inverse CDF. The
uniform is made from ``tf.random.stateless_uniform`` *integers* (Philox), which XLA and the CPU
kernel compute identically (their float uniforms differ, and so does ``stateless_categorical``),
so the same seed gives the same tokens in eager, graph and XLA mode. Step ``t`` of a call with
seed ``(s0, s1)`` uses the seed ``(s0, s1 + t)``.
"""

import random
import warnings
from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_rnnlm.data.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID

PACKAGE = "keras_rnnlm"
NEG = -1e9  # "minus infinity" that keeps arithmetic finite (no inf - inf)
_UNIFORM_BITS = 24  # float32 holds every multiple of 2**-24 in [0, 1) exactly

#: The one list of ids a sampler never emits unless told otherwise: padding, <unk> and <bos>
#: (the library's samplers and the SavedModel's ``generate`` signatures both use it).
DEFAULT_SUPPRESSED_IDS = (PAD_ID, UNK_ID, BOS_ID)


def as_state_list(states):
    return list(states) if isinstance(states, (list, tuple)) else [states]


def check_model(model) -> None:
    """Refuse models that cannot generate (stateful, bidirectional); build an unbuilt one."""
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
    return model.logits_from_hidden(last), [as_state_list(s) for s in states]


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
    return model.step(token_ids, [as_state_list(layer_states) for layer_states in states])


def stateless_uniform(seed, batch_size):
    """``(batch_size,)`` float32 uniforms in ``(0, 1)``, the same in eager, graph and XLA.

    Philox integers (bit-identical on the CPU kernel and under XLA) mapped exactly to float32.
    """
    ints = tf.random.stateless_uniform(
        [batch_size], seed, minval=0, maxval=2**_UNIFORM_BITS, dtype=tf.int32, alg="philox"
    )
    return (tf.cast(ints, tf.float32) + 0.5) / float(2**_UNIFORM_BITS)


def draw(weights, seed):
    """One index per row drawn with probability proportional to ``weights`` (inverse CDF).

    Args:
        weights: float ``(batch, n)``, non-negative, not necessarily normalised; a zero weight
            is never drawn.
        seed: int32 ``(2,)`` stateless seed.

    Returns:
        int32 ``(batch,)`` indices into the last axis.
    """
    weights = tf.cast(weights, tf.float32)
    cdf = tf.cumsum(weights, axis=-1)  # (batch, n)
    threshold = stateless_uniform(seed, tf.shape(weights)[0])[:, None] * cdf[:, -1:]
    index = tf.reduce_sum(tf.cast(cdf <= threshold, tf.int32), axis=-1)  # first cdf > threshold
    n = tf.shape(weights)[-1]
    last_positive = n - 1 - tf.argmax(tf.reverse(weights, [-1]) > 0, axis=-1, output_type="int32")
    return tf.minimum(index, last_positive)  # rounding can put the threshold at the total


def loop_length(max_new_tokens, max_length, caller: str):
    """A sampler call's ``max_new_tokens``, or its deprecated name ``max_length`` (warns).

    Args:
        max_new_tokens: the generated-token bound (a Python int or a scalar int32 tensor).
        max_length: its old name in the samplers' ``__call__``; ``DeprecationWarning``.
        caller: the sampler's name, for the messages.

    Returns:
        The bound to use.
    """
    if max_length is None:
        if max_new_tokens is None:
            raise TypeError(f"{caller}() needs max_new_tokens (the number of tokens to generate).")
        return max_new_tokens
    if max_new_tokens is not None:
        raise TypeError(f"{caller}() got max_new_tokens and its deprecated name max_length.")
    warnings.warn(
        f"{caller}(max_length=...) is deprecated: it counts generated tokens, so it is named "
        "max_new_tokens (max_length means the total length, prompt included, elsewhere).",
        DeprecationWarning,
        stacklevel=3,
    )
    return max_length


def is_python_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Sampler:
    """Base sampler: the bounded generation loop; subclasses choose the next token.

    The loop starts from the logits and states that ``prefill`` returns, and at every step
    turns the logits into probabilities (``compute_probabilities``: suppressed ids removed,
    temperature applied), picks one token per row (``get_next_token``), writes it, and feeds it
    to ``next_fn`` for the next logits. A row stops after it emits ``end_token_id`` (later
    positions are 0); the loop stops when every row has stopped or after ``max_new_tokens`` tokens.

    Args:
        temperature: divides the logits before the softmax (< 1 sharper, > 1 flatter); a
            Python number, or a scalar tensor inside a traced function (the export's).
        seed: int seed for the random strategies; the same seed gives the same samples. None
            draws a fresh seed per call.
        suppressed_token_ids: ids never emitted (default padding, ``<unk>`` and ``<bos>``);
            pass ``(PAD_ID, BOS_ID)`` to allow ``<unk>``.

    Call arguments:
        next_fn: ``next_fn(token_ids, states) -> (logits, states)``, one decoding step
            (``decode_step`` bound to a model).
        logits: ``(batch, vocabulary_size)``, the distribution of the first new token.
        states: the recurrent states after the prompt (any nested structure of tensors).
        max_new_tokens: maximum number of generated tokens (the prompt is not counted): a Python
            int, or a scalar int32 tensor when ``buffer_length`` is given.
        end_token_id: id that ends a row (default ``<eos>``); None never stops early.
        seed: optional int32 ``(2,)`` tensor overriding ``self.seed``.
        buffer_length: static bound of a tensor ``max_new_tokens`` (the output buffer's size).
        max_length: deprecated name of ``max_new_tokens`` (``DeprecationWarning``).

    Returns:
        int32 ``(batch, max_new_tokens)``: the generated ids, ``end_token_id`` included, 0 after.

    Example:

    >>> sampler = TopKSampler(k=10, seed=1)
    >>> tokens = generate(model, [[2, 17, 5]], sampler, max_new_tokens=20)
    """

    def __init__(
        self,
        temperature: float = 1.0,
        seed: int | None = None,
        suppressed_token_ids: Sequence[int] = DEFAULT_SUPPRESSED_IDS,
    ):
        if is_python_number(temperature) and temperature <= 0:
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
        return tf.where(suppressed, tf.cast(NEG, logits.dtype), logits)

    def compute_probabilities(self, logits):
        """``softmax(mask_logits(logits) / temperature)`` in float32, ``(batch, vocab)``."""
        logits = tf.cast(self.mask_logits(logits), "float32")
        return tf.nn.softmax(logits / tf.cast(self.temperature, "float32"), axis=-1)

    def get_next_token(self, probabilities, seed):
        """Pick one id per row from ``(batch, vocab)`` probabilities; ``seed`` is ``(2,)``."""
        raise NotImplementedError

    def resolve_seed(self):
        """The base seed of one call: ``self.seed`` or a fresh random one."""
        seed = self.seed if self.seed is not None else random.randrange(2**31 - 1)
        return tf.constant([seed, 0], dtype="int32")

    def __call__(
        self,
        next_fn,
        logits,
        states,
        max_new_tokens=None,
        end_token_id=EOS_ID,
        seed=None,
        buffer_length=None,
        *,
        max_length=None,
    ):
        max_new_tokens = loop_length(max_new_tokens, max_length, type(self).__name__)
        if seed is None:
            seed = self.resolve_seed()
        seed = tf.cast(seed, "int32")
        size = int(max_new_tokens if buffer_length is None else buffer_length)
        batch_size = tf.shape(logits)[0]
        end = -1 if end_token_id is None else int(end_token_id)
        tokens = tf.zeros((size, batch_size), dtype="int32")  # (buffer, batch)
        done = tf.zeros((batch_size,), dtype="bool")

        def cond(t, logits, states, tokens, done):
            return tf.logical_and(t < max_new_tokens, tf.logical_not(tf.reduce_all(done)))

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
            maximum_iterations=size,
        )
        tokens = tf.transpose(tokens)  # (batch, buffer)
        return tokens if buffer_length is None else tokens[:, :max_new_tokens]

    def get_config(self):
        return {
            "temperature": self.temperature,
            "seed": self.seed,
            "suppressed_token_ids": list(self.suppressed_token_ids),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
