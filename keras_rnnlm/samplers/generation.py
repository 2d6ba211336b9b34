"""Generation entry points: sampler lookup, prompt padding, cached compiled generation.

``generate`` / ``generate_text`` (the library's API since the start) and ``generate_with_model``
(keras-hub's ``generate(inputs, max_length)`` shape) all run one compiled function per model and
settings, built by ``make_generate_fn`` and cached on the model (see
``keras_rnnlm.evaluation.cached_function``): a second call with the same shapes does not retrace.

Lengths have one meaning each, as in keras-hub: ``max_length`` is the **total** length of a row,
prompt included (its start token counted): ``generate_with_model``,
``RNNLanguageModel.generate`` and ``keras-rnnlm generate --max-length``. ``max_new_tokens``
counts generated tokens only: ``generate``, ``generate_text``, ``make_generate_fn``, the
samplers' loop and the SavedModel's ``generate`` signatures. ``max_length=`` given to a function
of the second kind (its name there until now) still works, with a ``DeprecationWarning``.
"""

import json
import warnings
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_rnnlm.data.vocabulary import EOS_ID
from keras_rnnlm.evaluation import cached_function
from keras_rnnlm.samplers.base import Sampler, check_model, decode_step, prefill
from keras_rnnlm.samplers.beam_sampler import BeamSampler
from keras_rnnlm.samplers.greedy_sampler import GreedySampler
from keras_rnnlm.samplers.random_sampler import RandomSampler
from keras_rnnlm.samplers.top_k_sampler import TopKSampler
from keras_rnnlm.samplers.top_p_sampler import TopPSampler

#: New tokens ``generate_with_model`` adds when ``max_length`` is None.
DEFAULT_NEW_TOKENS = 32

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


def resolve_max_new_tokens(
    max_new_tokens: int | None, max_length: int | None, caller: str, stacklevel: int = 3
) -> int:
    """The number of tokens to generate, from ``max_new_tokens`` or the deprecated ``max_length``.

    Args:
        max_new_tokens: tokens to generate (None: ``DEFAULT_NEW_TOKENS``).
        max_length: the old name of ``max_new_tokens`` in ``caller`` (it counted generated
            tokens there); warns with a ``DeprecationWarning`` and is used as ``max_new_tokens``.
        caller: the public function's name, for the messages.
        stacklevel: ``warnings.warn``'s, so that the warning names the user's line.

    Returns:
        ``max_new_tokens`` as an int >= 1.

    Example:

    >>> resolve_max_new_tokens(None, None, "generate")
    32
    """
    if max_length is not None:
        if max_new_tokens is not None:
            raise TypeError(
                f"{caller}() got max_new_tokens={max_new_tokens} and max_length={max_length}: "
                "pass max_new_tokens only (max_length is its deprecated name here)."
            )
        warnings.warn(
            f"{caller}(max_length=...) is deprecated: here it counted generated tokens only, "
            "while max_length means the total length, prompt included, everywhere else "
            "(RNNLanguageModel.generate, generate_with_model, keras-rnnlm generate "
            f"--max-length). Pass max_new_tokens={max_length} for the same result.",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        max_new_tokens = max_length
    max_new_tokens = DEFAULT_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens:
        raise ValueError(f"max_new_tokens must be an int, got {max_new_tokens!r}.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    return int(max_new_tokens)


class _GenerateFunction:
    """``fn(prompt_ids, seed)``: prefill and the sampler's loop, the Python function traced.

    A callable object rather than a closure: TensorFlow keys its retracing statistics by the
    traced function's code object, which every closure made here would share, so six sampler
    settings (six functions, each traced once) read as one function retraced six times and
    logged "triggered tf.function retracing" warnings. An object without ``__code__`` gives
    each cached function statistics of its own; a real retrace of one still counts.
    """

    def __init__(self, model, sampler: Sampler, max_new_tokens: int, end_token_id):
        self.model, self.sampler = model, sampler
        self.max_new_tokens, self.end_token_id = max_new_tokens, end_token_id

    def next_fn(self, token_ids, states):
        return decode_step(self.model, token_ids, states)

    def __call__(self, prompt_ids, seed):
        logits, states = prefill(self.model, prompt_ids)
        return self.sampler(
            self.next_fn, logits, states, self.max_new_tokens, self.end_token_id, seed=seed
        )


def _sampler_key(sampler: Sampler) -> str:
    """The settings a compiled loop depends on (the seed is an argument, not a setting)."""
    config = {k: v for k, v in sampler.get_config().items() if k != "seed"}
    return json.dumps([type(sampler).__name__, config], sort_keys=True, default=str)


def make_generate_fn(
    model,
    sampler="greedy",
    max_new_tokens: int | None = None,
    end_token_id: int | None = EOS_ID,
    jit_compile: bool = False,
    *,
    max_length: int | None = None,
) -> Callable:
    """The compiled ``fn(prompt_ids, seed) -> tokens`` of ``model``, cached on the model.

    Args:
        model: an ``RNNLanguageModel`` (stateless).
        sampler: a ``Sampler`` or a name for ``get_sampler``.
        max_new_tokens: maximum number of generated tokens, the prompt not counted (None:
            ``DEFAULT_NEW_TOKENS``).
        end_token_id: stop token (default ``<eos>``); None generates exactly
            ``max_new_tokens``.
        jit_compile: compile the prefill and the whole loop with XLA (one compilation per
            prompt shape).
        max_length: deprecated name of ``max_new_tokens`` here (``DeprecationWarning``).

    Returns:
        A ``tf.function`` taking int32 ``(batch, time)`` right-padded prompts and an int32
        ``(2,)`` seed, returning what the sampler returns (see ``Sampler``/``BeamSampler``).
        The same model and settings (seed excepted) give the same function back.

    Example:

    >>> fn = make_generate_fn(model, GreedySampler(), max_new_tokens=20, jit_compile=True)
    >>> tokens = fn(pad_prompts([[2, 5, 9]]), tf.constant([0, 0]))
    """
    max_new_tokens = resolve_max_new_tokens(max_new_tokens, max_length, "make_generate_fn")
    check_model(model)
    sampler = get_sampler(sampler)

    def build():
        return _GenerateFunction(model, sampler, max_new_tokens, end_token_id)

    key = ("generate", _sampler_key(sampler), max_new_tokens, end_token_id)
    # autograph=False: the loop is an explicit tf.while_loop (AutoGraph has nothing to convert
    # and cannot read a callable object's source through cached_function's wrapper)
    return cached_function(
        model, key, build, jit_compile=jit_compile, reduce_retracing=True, autograph=False
    )


def generate(
    model,
    prompt_ids,
    sampler="greedy",
    max_new_tokens: int | None = None,
    end_token_id: int | None = EOS_ID,
    jit_compile: bool = False,
    *,
    max_length: int | None = None,
) -> np.ndarray:
    """Generate continuations of a batch of prompts of different lengths.

    Args:
        model: an ``RNNLanguageModel`` (stateless; any cell, stacked, tied, built-in layers).
        prompt_ids: a list of id lists (each normally ``[BOS_ID] + vocabulary.encode(text)``)
            or an int ``(batch, time)`` array right-padded with 0.
        sampler: a ``Sampler`` or ``"greedy"|"sample"|"top_k"|"top_p"|"beam"``.
        max_new_tokens: maximum number of generated tokens, the prompt not counted (None:
            ``DEFAULT_NEW_TOKENS``). For a total length, prompt included, use
            ``generate_with_model`` / ``RNNLanguageModel.generate``.
        end_token_id: a row stops after this id (default ``<eos>``, kept in the output);
            None never stops early.
        jit_compile: run prefill and loop under XLA.
        max_length: deprecated name of ``max_new_tokens`` here (``DeprecationWarning``).

    Returns:
        int32 numpy ``(batch, max_new_tokens)`` of generated ids, 0 after a row's end token
        (``BeamSampler(return_all_beams=True)``: ``(sequences, scores)`` with sequences
        ``(batch, num_beams, max_new_tokens)``).

    Example:

    >>> ids = generate(model, [[2, 17, 5], [2]], TopPSampler(p=0.9, seed=0), max_new_tokens=20)
    """
    max_new_tokens = resolve_max_new_tokens(max_new_tokens, max_length, "generate")
    sampler = get_sampler(sampler)
    if not isinstance(prompt_ids, np.ndarray):
        prompt_ids = pad_prompts(prompt_ids)
    fn = make_generate_fn(model, sampler, max_new_tokens, end_token_id, jit_compile)
    result = fn(tf.constant(prompt_ids, dtype="int32"), sampler.resolve_seed())
    return tf.nest.map_structure(lambda x: x.numpy(), result)


def generate_text(
    model,
    vocabulary,
    prompts: Sequence[str],
    sampler="greedy",
    max_new_tokens: int | None = None,
    num_samples: int = 1,
    jit_compile: bool = False,
    *,
    max_length: int | None = None,
) -> list[list[str]]:
    """Continue text prompts; for each prompt, ``num_samples`` continuations (text only).

    A prompt is encoded as ``[vocabulary.start_id] + vocabulary.encode(prompt)``, like a
    training sentence (``<bos>``, or ``<eos>`` for stream-trained models, which also do not stop
    at ``<eos>``: for them it separates sentences and decodes as a line break).
    With a ``BeamSampler`` the ``num_samples`` best beams are returned (``num_samples`` must
    not exceed ``num_beams``); other samplers draw ``num_samples`` rows per prompt in one batch.

    Args:
        model: an ``RNNLanguageModel`` (stateless).
        vocabulary: its ``Vocabulary``.
        prompts: text prompts.
        sampler: a ``Sampler`` or a name for ``get_sampler``.
        max_new_tokens: maximum number of generated tokens per continuation, the prompt not
            counted (None: ``DEFAULT_NEW_TOKENS``).
        num_samples: continuations per prompt.
        jit_compile: run prefill and loop under XLA.
        max_length: deprecated name of ``max_new_tokens`` here (``DeprecationWarning``).

    Returns:
        For every prompt, a list of ``num_samples`` generated continuations (special tokens
        dropped).

    Example:

    >>> generate_text(model, vocab, ["the students opened their"], "top_k", num_samples=2)
    """
    max_new_tokens = resolve_max_new_tokens(max_new_tokens, max_length, "generate_text")
    sampler = get_sampler(sampler)
    encoded = [[vocabulary.start_id, *ids] for ids in vocabulary.encode_batch(list(prompts))]
    end_token_id = None if vocabulary.separates_with_eos else EOS_ID
    if isinstance(sampler, BeamSampler):
        if num_samples > sampler.num_beams:
            raise ValueError(
                f"num_samples ({num_samples}) must not exceed the beam width ({sampler.num_beams})."
            )
        beams = BeamSampler.from_config({**sampler.get_config(), "return_all_beams": True})
        sequences, _ = generate(model, encoded, beams, max_new_tokens, end_token_id, jit_compile)
        return [[vocabulary.decode(s) for s in row[:num_samples]] for row in sequences]
    repeated = [ids for ids in encoded for _ in range(num_samples)]
    tokens = generate(model, repeated, sampler, max_new_tokens, end_token_id, jit_compile)
    texts = [vocabulary.decode(row) for row in tokens]
    return [texts[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]


def generate_with_model(
    model,
    inputs,
    max_length: int | None = None,
    sampler="greedy",
    seed: int | None = None,
    vocabulary=None,
    **sampler_kwargs,
):
    """keras-hub-style generation: prompts in, prompts with their continuations out.

    ``max_length`` is keras-hub's: the **total** length of a row in tokens, prompt included
    (the start token counted), so a row gets ``max_length - len(prompt)`` new tokens at most.
    The compiled function is cached on ``model`` (``make_generate_fn``): calling again with the
    same sampler settings and prompt shape does not retrace.

    Args:
        model: an ``RNNLanguageModel`` (stateless).
        inputs: with a vocabulary (``vocabulary`` or a ``model.vocabulary`` attribute), a string
            or a list of strings; otherwise a list of id lists (each normally starting with
            the start id) or an int ``(batch, time)`` array right-padded with 0.
        max_length: total tokens per row, prompt included (None: the longest prompt + 32).
        sampler: a ``Sampler`` or a name for ``get_sampler`` (``sampler_kwargs`` go to it).
        seed: int seed of the random samplers (None: the sampler's own seed, or a fresh one).
        vocabulary: the model's ``Vocabulary``: strings in and out, the start id prepended, and
            no stop at ``<eos>`` for stream-trained models.
        **sampler_kwargs: e.g. ``temperature``, ``k``, ``p``.

    Returns:
        With a vocabulary: the decoded prompt + continuation (a string for a string input, else
        a list). Otherwise int32 numpy ``(batch, max_length)``: each prompt's ids followed by its
        generated ids, right-padded with 0.

    Example:

    >>> generate_with_model(model, "the students opened their", max_length=12,
    ...                     sampler="top_k", k=5, seed=0, vocabulary=vocab)
    """
    sampler = get_sampler(sampler, **sampler_kwargs)
    if isinstance(sampler, BeamSampler) and sampler.return_all_beams:
        raise ValueError("generate_with_model returns one sequence per prompt; use generate.")
    vocabulary = vocabulary if vocabulary is not None else getattr(model, "vocabulary", None)
    single = isinstance(inputs, str)
    if vocabulary is not None:
        texts = [inputs] if single else list(inputs)
        prompts = [[vocabulary.start_id, *ids] for ids in vocabulary.encode_batch(texts)]
        end_token_id = None if vocabulary.separates_with_eos else EOS_ID
    else:
        if single:
            raise ValueError("String inputs need a vocabulary (pass vocabulary=...).")
        rows = inputs if isinstance(inputs, np.ndarray) else pad_prompts(inputs)
        prompts = [[int(i) for i in row if i != 0] for row in np.asarray(rows)]
        end_token_id = EOS_ID
    lengths = [len(p) for p in prompts]
    if max_length is None:
        max_length = max(lengths) + DEFAULT_NEW_TOKENS
    new_tokens = int(max_length) - min(lengths)
    if new_tokens < 1:
        raise ValueError(f"max_length ({max_length}) leaves no room after the prompts {lengths}.")
    fn = make_generate_fn(model, sampler, new_tokens, end_token_id)
    seed = sampler.resolve_seed() if seed is None else tf.constant([seed, 0], "int32")
    generated = fn(tf.constant(pad_prompts(prompts)), seed).numpy()
    out = np.zeros((len(prompts), int(max_length)), dtype=np.int32)
    for row, (prompt, tokens) in enumerate(zip(prompts, generated, strict=True)):
        ids = (prompt + [int(t) for t in tokens if t != 0])[: int(max_length)]
        out[row, : len(ids)] = ids
    if vocabulary is None:
        return out
    # the start id opens every row: it is context, not text (``<eos>`` would decode as "\n")
    texts = [vocabulary.decode(row[1:]) for row in out]
    return texts[0] if single else texts
