"""SavedModel export with serving signatures that load anywhere TensorFlow runs.

The export holds only TensorFlow graphs and variables: a TF-only process (TF Serving, a plain
``tf.saved_model.load``) needs no ``keras_rnnlm`` code. It is always traced through the
from-scratch layers, so it never contains the GPU-only cuDNN op, whatever device trained the
model or whether it used ``use_builtin_layers=True``. The signatures run the library's own
tokenizer, scoring and samplers (``server.py``), so they give the library's ids, log-probabilities
and generated tokens.

Signatures (names are an interface; batch size is dynamic everywhere):

* ``serving_default`` / ``score``: ``token_ids`` int32 ``(batch, time)``, 0 = padding ->
  ``log_probs`` ``(batch, time, vocabulary_size)``, the next-token log-probabilities at each
  position, and ``token_log_probs`` ``(batch, time)``: ``log P(token_ids[:, t + 1] | ...<= t)``,
  0 where the next token is padding (and at the last position).
* ``score_text``: ``text`` string ``(batch,)`` -> ``log_prob`` ``(batch,)``, ``num_tokens``,
  ``token_ids`` and ``token_log_probs``: the sentence score of ``keras_rnnlm.score_sentences`` and
  ``keras-rnnlm score``. **The ``<eos>`` convention**: a sentence is ``start tokens <eos>`` and its
  score counts the final ``<eos>`` (``num_tokens`` = tokens + 1), everywhere.
* ``step``: ``token`` int32 ``(batch,)`` and the states ``h_0`` (``c_0`` for LSTMs), ``h_1``, ...
  -> ``logits`` ``(batch, vocabulary_size)`` and the new states under the same names.
* ``step_with_reset``: as ``step`` with one more input, ``reset`` int32 ``(batch,)``: the
  states of the rows where it is not 0 are zeroed before the step, so ``reset = 1`` with the
  stream's start token (the card's ``start_id``) begins a new stream in that row while the
  other rows keep theirs. A server can multiplex independent streams (requests) in one
  fixed batch and start a new one in a freed row without rebuilding the states of the
  others (continuous batching); ``step`` keeps its inputs unchanged.
* ``initial_state``: ``batch_size`` int32 scalar -> zero states.
* ``generate``: ``prompt_ids`` int32 ``(batch, time)`` right-padded (start with the card's
  ``start_id``: ``<bos>`` = 2, or ``<eos>`` = 3 for stream-trained models), ``max_new_tokens``,
  ``temperature`` (0 = greedy), ``top_k`` (0 = all), ``seed`` -> ``generated_ids``
  ``(batch, max_new_tokens)``; after ``<eos>`` a row is padded with 0 (stream-trained models
  do not stop at ``<eos>``, which separates their sentences). The tokens are those of
  ``keras_rnnlm.generate`` with ``GreedySampler``, ``RandomSampler(temperature)`` or
  ``TopKSampler(k, temperature)`` and the same seed.
* ``generate_top_p``: as ``generate`` with ``top_p`` (float in ``(0, 1]``, 1 = all) instead of
  ``top_k``: ``TopPSampler(p, temperature)``.
* ``tokenize``: ``text`` string ``(batch,)`` -> ``token_ids`` (start id + tokens, right-padded,
  no ``<eos>``), by the rules of ``keras_rnnlm.data.tokenizer``; ``detokenize``: ``token_ids`` ->
  ``text``. String ops stay outside every XLA function.
* ``score_tpu``, ``step_tpu``: fixed-shape copies for TPU inference, also reachable through
  ``SaveOptions(function_aliases={"tpu_func": ...})``.

Bad ids are refused, never silently wrong: ids outside ``[0, vocabulary_size)`` fail an
assertion in the (non-XLA) signature wrapper before the compiled computation runs; int64 or
float ids are rejected by the signature's int32 input type.
"""

from keras_rnnlm.export.saving import (
    export_run,
    export_saved_model,
    reexport_saved_model,
    saved_model_op_types,
)
from keras_rnnlm.export.server import (
    MAX_NEW_TOKENS,
    SPECIAL_IDS,
    LanguageModelServer,
    SettingsSampler,
    serving_copy,
    state_names,
)

__all__ = [
    "MAX_NEW_TOKENS",
    "SPECIAL_IDS",
    "LanguageModelServer",
    "SettingsSampler",
    "export_run",
    "export_saved_model",
    "reexport_saved_model",
    "saved_model_op_types",
    "serving_copy",
    "state_names",
]
