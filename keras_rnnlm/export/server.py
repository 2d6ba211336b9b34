"""The ``tf.Module`` a SavedModel export saves: the model, the vocabulary tables, the signatures.

Every signature runs the library's own engines, traced into the graph: the tokenizer of
``keras_rnnlm.data.tokenizer``, the samplers and the generation loop of ``keras_rnnlm.samplers``
(with tensor-valued settings), the model's ``forward``/``step``. Nothing is re-implemented here,
so the export gives the library's ids, scores and tokens (see ``tests/export_test.py``).
"""

import tensorflow as tf

from keras_rnnlm.data.tokenizer import tokenize_tensor
from keras_rnnlm.data.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.samplers import (
    DEFAULT_SUPPRESSED_IDS,
    GreedySampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
    decode_step,
    prefill,
)

MAX_NEW_TOKENS = 512  # bound of the generate loop (XLA needs a bounded loop)
SPECIAL_IDS = (PAD_ID, BOS_ID, EOS_ID)


def serving_copy(model: RNNLanguageModel) -> RNNLanguageModel:
    """A stateless copy on the from-scratch layers (no cuDNN), with the same weights."""
    if not model.built:
        raise ValueError("The model is not built: call it on data or train it before exporting.")
    return model.clone_with(stateful=False, use_builtin_layers=False, dropout=0.0)


def state_names(model) -> list[str]:
    """``h_0`` (``c_0`` for LSTMs), ``h_1``, ...: the names of the flat states of ``step``."""
    names = []
    for layer, sizes in enumerate(model.state_sizes):
        letters = ["h", "c"] if len(sizes) == 2 else ["h"]
        names += [f"{letter}_{layer}" for letter in letters]
    return names


class SettingsSampler(Sampler):
    """The library's samplers chosen per call by tensor-valued settings (the export's sampler).

    ``temperature <= 0``: ``GreedySampler``; else ``top_k > 0``: ``TopKSampler(k=top_k)``; else
    ``top_p < 1``: ``TopPSampler(p=top_p)``; else ``RandomSampler``. Each step calls the chosen
    sampler's own ``get_next_token`` (``tf.switch_case``), inside the shared ``Sampler`` loop,
    with the one suppressed-id list ``DEFAULT_SUPPRESSED_IDS``.

    Args:
        temperature: float32 scalar tensor (0 = greedy).
        top_k: int32 scalar tensor (0 = no top-k).
        top_p: float32 scalar tensor (1 = no nucleus).
    """

    def __init__(self, temperature, top_k, top_p):
        greedy = temperature <= 0
        super().__init__(temperature=tf.where(greedy, tf.ones_like(temperature), temperature))
        self.branch = tf.where(greedy, 0, tf.where(top_k > 0, 2, tf.where(top_p < 1, 3, 1)))
        self.samplers = [
            GreedySampler(),
            RandomSampler(),
            TopKSampler(k=top_k),
            TopPSampler(p=top_p),
        ]

    def get_next_token(self, probabilities, seed):
        branches = [
            lambda sampler=sampler: sampler.get_next_token(probabilities, seed)
            for sampler in self.samplers
        ]
        return tf.switch_case(self.branch, branches)


class LanguageModelServer(tf.Module):
    """The tf.Module that is saved: the model's variables, the vocabulary tables, signatures."""

    def __init__(
        self,
        model: RNNLanguageModel,
        vocabulary: Vocabulary,
        tpu_batch_size=8,
        tpu_sequence_length=64,
    ):
        super().__init__()
        self.model = model
        self.vocabulary_size = model.vocabulary_size
        self.state_names = state_names(model)
        self.state_sizes = [s for sizes in model.state_sizes for s in sizes]
        self.level = vocabulary.level
        self.lowercase = vocabulary.lowercase
        self.pretokenized = vocabulary.pretokenized
        self.start_id = vocabulary.start_id  # <bos>, or <eos> for stream-trained models
        self.stop_at_eos = not vocabulary.separates_with_eos
        self.suppressed_ids = DEFAULT_SUPPRESSED_IDS
        self.tokens_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(vocabulary.tokens), tf.range(len(vocabulary.tokens), dtype=tf.int64)
            ),
            default_value=UNK_ID,
        )
        self.id_table = tf.constant(vocabulary.tokens)

        self._score_xla = tf.function(self._score, jit_compile=True)
        self._step_xla = tf.function(self._step, jit_compile=True)
        self._step_with_reset_xla = tf.function(self._step_with_reset, jit_compile=True)
        self._generate_xla = tf.function(self._generate, jit_compile=True)

        ids_spec = tf.TensorSpec(None, tf.int32, name="token_ids")  # rank checked at run time
        text_spec = tf.TensorSpec((None,), tf.string, name="text")
        self.score = tf.function(self._checked_score, input_signature=[ids_spec])
        state_specs = [
            tf.TensorSpec((None, s), tf.float32, name=name)
            for name, s in zip(self.state_names, self.state_sizes)
        ]
        self.step = tf.function(
            self._checked_step,
            input_signature=[tf.TensorSpec(None, tf.int32, name="token"), *state_specs],
        )
        self.step_with_reset = tf.function(
            self._checked_step_with_reset,
            input_signature=[
                tf.TensorSpec(None, tf.int32, name="token"),
                tf.TensorSpec(None, tf.int32, name="reset"),
                *state_specs,
            ],
        )
        self.initial_state = tf.function(
            self._initial_state, input_signature=[tf.TensorSpec((), tf.int32, name="batch_size")]
        )
        prompt = tf.TensorSpec(None, tf.int32, name="prompt_ids")
        max_new = tf.TensorSpec((), tf.int32, name="max_new_tokens")
        temperature = tf.TensorSpec((), tf.float32, name="temperature")
        seed = tf.TensorSpec((), tf.int32, name="seed")
        self.generate = tf.function(
            self._generate_top_k,
            input_signature=[
                prompt,
                max_new,
                temperature,
                tf.TensorSpec((), tf.int32, "top_k"),
                seed,
            ],
        )
        self.generate_top_p = tf.function(
            self._generate_top_p,
            input_signature=[
                prompt,
                max_new,
                temperature,
                tf.TensorSpec((), tf.float32, name="top_p"),
                seed,
            ],
        )
        self.tokenize = tf.function(self._tokenize, input_signature=[text_spec])
        self.score_text = tf.function(self._score_text, input_signature=[text_spec])
        self.detokenize = tf.function(
            self._detokenize,
            input_signature=[tf.TensorSpec((None, None), tf.int32, name="token_ids")],
        )
        b, t = tpu_batch_size, tpu_sequence_length
        self.score_tpu = tf.function(
            self._score,
            jit_compile=True,
            input_signature=[tf.TensorSpec((b, t), tf.int32, name="token_ids")],
        )
        self.step_tpu = tf.function(
            self._step,
            jit_compile=True,
            input_signature=[
                tf.TensorSpec((b,), tf.int32, name="token"),
                *[
                    tf.TensorSpec((b, s), tf.float32, name=name)
                    for name, s in zip(self.state_names, self.state_sizes)
                ],
            ],
        )

    # --- computations (XLA-compiled) -------------------------------------------------------
    def _nested(self, flat_states):
        nested, i = [], 0
        for sizes in self.model.state_sizes:
            nested.append(list(flat_states[i : i + len(sizes)]))
            i += len(sizes)
        return nested

    def _score(self, token_ids):
        logits, _ = self.model.forward(token_ids)
        log_probs = tf.nn.log_softmax(logits, axis=-1)  # (batch, time, vocab)
        next_ids = tf.concat([token_ids[:, 1:], tf.zeros_like(token_ids[:, :1])], axis=1)
        picked = tf.gather(log_probs, next_ids, batch_dims=2)  # (batch, time)
        token_log_probs = tf.where(next_ids > 0, picked, tf.zeros_like(picked))
        return {"log_probs": log_probs, "token_log_probs": token_log_probs}

    def _step(self, token, *states):
        logits, new_states = self.model.step(token, self._nested(states))
        out = {"logits": logits}
        flat = [s for layer in new_states for s in layer]
        out.update({name: s for name, s in zip(self.state_names, flat)})
        return out

    def _step_with_reset(self, token, reset, *states):
        """``_step`` after zeroing the states of the rows where ``reset`` is not 0."""
        zero = (reset != 0)[:, None]
        return self._step(token, *[tf.where(zero, tf.zeros_like(s), s) for s in states])

    def _generate(self, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed):
        """The library's prefill and sampler loop (``keras_rnnlm.samplers``), settings as tensors."""
        static = (None, self.vocabulary_size)  # XLA's sort needs the vocabulary size statically

        def next_fn(token_ids, states):
            logits, states = decode_step(self.model, token_ids, states)
            return tf.ensure_shape(logits, static), states

        logits, states = prefill(self.model, prompt_ids)
        sampler = SettingsSampler(temperature, top_k, top_p)
        return sampler(
            next_fn,
            tf.ensure_shape(logits, static),
            states,
            max_new_tokens,
            end_token_id=EOS_ID if self.stop_at_eos else None,
            seed=tf.stack([seed, 0]),
            buffer_length=MAX_NEW_TOKENS,
        )

    # --- signature wrappers (validation outside XLA) -----------------------------------------
    def _check_ids(self, ids, name, rank=2):
        shape = "(batch, time)" if rank == 2 else "(batch,)"
        tf.debugging.assert_rank(ids, rank, message=f"{name} must have rank {rank} {shape}")
        return [
            tf.debugging.assert_greater_equal(ids, 0, message=f"{name}: ids must be >= 0"),
            tf.debugging.assert_less(
                ids,
                self.vocabulary_size,
                message=f"{name}: ids must be < vocabulary_size={self.vocabulary_size}",
            ),
        ]

    def _checked_score(self, token_ids):
        with tf.control_dependencies(self._check_ids(token_ids, "token_ids")):
            return self._score_xla(tf.ensure_shape(token_ids, (None, None)))

    def _checked_step(self, token, *states):
        with tf.control_dependencies(self._check_ids(token, "token", rank=1)):
            return self._step_xla(tf.ensure_shape(token, (None,)), *states)

    def _checked_step_with_reset(self, token, reset, *states):
        checks = self._check_ids(token, "token", rank=1) + [
            tf.debugging.assert_rank(reset, 1, message="reset must have rank 1 (batch,)"),
            tf.debugging.assert_equal(
                tf.shape(reset), tf.shape(token), message="reset needs one value per token"
            ),
        ]
        with tf.control_dependencies(checks):
            token, reset = tf.ensure_shape(token, (None,)), tf.ensure_shape(reset, (None,))
            return self._step_with_reset_xla(token, reset, *states)

    def _initial_state(self, batch_size):
        return {
            name: tf.zeros((batch_size, s)) for name, s in zip(self.state_names, self.state_sizes)
        }

    def _checked_generate(self, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed):
        checks = self._check_ids(prompt_ids, "prompt_ids") + [
            tf.debugging.assert_greater(
                tf.reduce_sum(tf.cast(prompt_ids > 0, tf.int32), axis=1),
                0,
                message="every prompt needs >= 1 token (<bos>=2)",
            ),
            tf.debugging.assert_non_negative(max_new_tokens),
            tf.debugging.assert_less_equal(
                max_new_tokens, MAX_NEW_TOKENS, message=f"max_new_tokens <= {MAX_NEW_TOKENS}"
            ),
            tf.debugging.assert_non_negative(temperature),
            tf.debugging.assert_non_negative(top_k),
            tf.debugging.assert_greater(top_p, 0.0, message="top_p must be in (0, 1]"),
            tf.debugging.assert_less_equal(top_p, 1.0, message="top_p must be in (0, 1]"),
        ]
        with tf.control_dependencies(checks):
            ids = self._generate_xla(
                tf.ensure_shape(prompt_ids, (None, None)),
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
            )
        return {"generated_ids": ids}

    def _generate_top_k(self, prompt_ids, max_new_tokens, temperature, top_k, seed):
        return self._checked_generate(
            prompt_ids, max_new_tokens, temperature, top_k, tf.constant(1.0), seed
        )

    def _generate_top_p(self, prompt_ids, max_new_tokens, temperature, top_p, seed):
        return self._checked_generate(
            prompt_ids, max_new_tokens, temperature, tf.constant(0), top_p, seed
        )

    def _token_ids(self, text, end=()):
        """Ragged ids ``start, tokens..., *end`` of every text (the library's tokenizer)."""
        pieces = tokenize_tensor(text, self.level, self.lowercase, self.pretokenized)
        ids = tf.cast(self.tokens_table.lookup(pieces), tf.int32)
        batch = tf.shape(text)[0]
        parts = [tf.RaggedTensor.from_tensor(tf.fill([batch, 1], self.start_id)), ids]
        if end:
            parts.append(tf.RaggedTensor.from_tensor(tf.fill([batch, 1], end[0])))
        return tf.concat(parts, axis=1)

    def _tokenize(self, text):
        return {"token_ids": self._token_ids(text).to_tensor(default_value=PAD_ID)}

    def _score_text(self, text):
        """``log P(start tokens <eos>)`` per text: the library's score, ``<eos>`` counted."""
        ids = self._token_ids(text, end=(EOS_ID,))
        token_ids = ids.to_tensor(default_value=PAD_ID)
        token_log_probs = self._score_xla(token_ids)["token_log_probs"]
        return {
            "log_prob": tf.reduce_sum(token_log_probs, axis=1),
            "num_tokens": tf.cast(ids.row_lengths() - 1, tf.int32),
            "token_ids": token_ids,
            "token_log_probs": token_log_probs,
        }

    def _detokenize(self, token_ids):
        keep = tf.reduce_all(tf.stack([tf.not_equal(token_ids, i) for i in SPECIAL_IDS]), axis=0)
        ragged = tf.ragged.boolean_mask(token_ids, keep)
        tokens = tf.gather(self.id_table, ragged)
        separator = "" if self.level == "char" else " "
        return {"text": tf.strings.reduce_join(tokens, axis=1, separator=separator)}
