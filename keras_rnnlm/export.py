"""SavedModel export with serving signatures that load anywhere TensorFlow runs.

The export holds only TensorFlow graphs and variables: a TF-only process (TF Serving, a plain
``tf.saved_model.load``) needs no ``keras_rnnlm`` code. It is always traced through the
from-scratch layers, so it never contains the GPU-only cuDNN op, whatever device trained the
model or whether it used ``use_builtin_layers=True``.

Signatures (names are an interface; batch size is dynamic everywhere):

* ``serving_default`` / ``score``: ``token_ids`` int32 ``(batch, time)``, 0 = padding ->
  ``log_probs`` ``(batch, time, vocabulary_size)``, the next-token log-probabilities at each
  position, and ``token_log_probs`` ``(batch, time)``: ``log P(token_ids[:, t + 1] | ...<= t)``,
  0 where the next token is padding (and at the last position).
* ``step``: ``token`` int32 ``(batch,)`` and the states ``h_0`` (``c_0`` for LSTMs), ``h_1``, ...
  -> ``logits`` ``(batch, vocabulary_size)`` and the new states under the same names.
* ``initial_state``: ``batch_size`` int32 scalar -> zero states.
* ``generate``: ``prompt_ids`` int32 ``(batch, time)`` right-padded (start with the card's
  ``start_id``: ``<bos>`` = 2, or ``<eos>`` = 3 for stream-trained models), ``max_new_tokens``,
  ``temperature`` (0 = greedy), ``top_k`` (0 = all), ``seed`` -> ``generated_ids``
  ``(batch, max_new_tokens)``; after ``<eos>`` a row is padded with 0 (stream-trained models
  do not stop at ``<eos>``, which separates their sentences).
* ``tokenize``: ``text`` string ``(batch,)`` -> ``token_ids`` (start id + tokens, right-padded);
  ``detokenize``: ``token_ids`` -> ``text``. String ops stay outside every XLA function.
* ``score_tpu``, ``step_tpu``: fixed-shape copies for TPU inference, also reachable through
  ``SaveOptions(function_aliases={"tpu_func": ...})``.

Bad ids are refused, never silently wrong: ids outside ``[0, vocabulary_size)`` fail an
assertion in the (non-XLA) signature wrapper before the compiled computation runs; int64 or
float ids are rejected by the signature's int32 input type.
"""

import json
import shutil
from pathlib import Path

import keras
import tensorflow as tf

from keras_rnnlm.data.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary
from keras_rnnlm.models import RNNLanguageModel

MAX_NEW_TOKENS = 512  # bound of the generate loop (XLA needs a bounded loop)
SPECIAL_IDS = (PAD_ID, BOS_ID, EOS_ID)


def serving_copy(model: RNNLanguageModel) -> RNNLanguageModel:
    """A stateless copy on the from-scratch layers (no cuDNN), with the same weights."""
    if not model.built:
        raise ValueError("The model is not built: call it on data or train it before exporting.")
    return model.clone_with(stateful=False, use_builtin_layers=False, dropout=0.0)


def _state_names(model):
    names = []
    for layer, sizes in enumerate(model.state_sizes):
        letters = ["h", "c"] if len(sizes) == 2 else ["h"]
        names += [f"{letter}_{layer}" for letter in letters]
    return names


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
        self.state_names = _state_names(model)
        self.state_sizes = [s for sizes in model.state_sizes for s in sizes]
        self.level = vocabulary.level
        self.lowercase = vocabulary.lowercase
        self.pretokenized = vocabulary.pretokenized
        self.start_id = vocabulary.start_id  # <bos>, or <eos> for stream-trained models
        self.stop_at_eos = not vocabulary.separates_with_eos
        self.tokens_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(vocabulary.tokens), tf.range(len(vocabulary.tokens), dtype=tf.int64)
            ),
            default_value=UNK_ID,
        )
        self.id_table = tf.constant(vocabulary.tokens)

        self._score_xla = tf.function(self._score, jit_compile=True)
        self._step_xla = tf.function(self._step, jit_compile=True)
        self._generate_xla = tf.function(self._generate, jit_compile=True)

        self.score = tf.function(
            self._checked_score,
            # any rank accepted here and checked at run time: a clear error for a wrong rank
            input_signature=[tf.TensorSpec(None, tf.int32, name="token_ids")],
        )
        state_specs = [
            tf.TensorSpec((None, s), tf.float32, name=name)
            for name, s in zip(self.state_names, self.state_sizes)
        ]
        self.step = tf.function(
            self._checked_step,
            input_signature=[tf.TensorSpec(None, tf.int32, name="token"), *state_specs],
        )
        self.initial_state = tf.function(
            self._initial_state, input_signature=[tf.TensorSpec((), tf.int32, name="batch_size")]
        )
        self.generate = tf.function(
            self._checked_generate,
            input_signature=[
                tf.TensorSpec(None, tf.int32, name="prompt_ids"),
                tf.TensorSpec((), tf.int32, name="max_new_tokens"),
                tf.TensorSpec((), tf.float32, name="temperature"),
                tf.TensorSpec((), tf.int32, name="top_k"),
                tf.TensorSpec((), tf.int32, name="seed"),
            ],
        )
        self.tokenize = tf.function(
            self._tokenize, input_signature=[tf.TensorSpec((None,), tf.string, name="text")]
        )
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
        next_ids = tf.concat(
            [token_ids[:, 1:], tf.zeros_like(token_ids[:, :1])], axis=1
        )  # (batch, time)
        picked = tf.gather(log_probs, next_ids, batch_dims=2)
        token_log_probs = tf.where(next_ids > 0, picked, tf.zeros_like(picked))
        return {"log_probs": log_probs, "token_log_probs": token_log_probs}

    def _step(self, token, *states):
        logits, new_states = self.model.step(token, self._nested(states))
        out = {"logits": logits}
        flat = [s for layer in new_states for s in layer]
        out.update({name: s for name, s in zip(self.state_names, flat)})
        return out

    def _generate(self, prompt_ids, max_new_tokens, temperature, top_k, seed):
        batch = tf.shape(prompt_ids)[0]
        logits, states = self.model.forward(prompt_ids)
        lengths = tf.reduce_sum(tf.cast(prompt_ids > 0, tf.int32), axis=1)
        last = tf.gather(logits, tf.maximum(lengths - 1, 0), batch_dims=1)  # (batch, vocab)
        forbidden = tf.one_hot([PAD_ID, UNK_ID, BOS_ID], self.vocabulary_size, on_value=-1e9)
        forbidden = tf.reduce_sum(forbidden, axis=0)  # never emit padding, <unk> or <bos>
        output = tf.TensorArray(tf.int32, size=MAX_NEW_TOKENS)
        finished = tf.zeros((batch,), tf.bool)
        steps = tf.minimum(max_new_tokens, MAX_NEW_TOKENS)

        def body(i, last, states, finished, output):
            scores = last + forbidden
            k = tf.where(top_k > 0, tf.minimum(top_k, self.vocabulary_size), self.vocabulary_size)
            kth = tf.gather(tf.sort(scores, direction="DESCENDING"), k - 1, axis=1)[:, None]
            scores = tf.where(scores < kth, tf.fill(tf.shape(scores), -1e9), scores)
            sampled = tf.random.stateless_categorical(
                scores / tf.maximum(temperature, 1e-6), 1, seed=tf.stack([seed, i]), dtype=tf.int32
            )[:, 0]
            greedy = tf.argmax(scores, axis=-1, output_type=tf.int32)
            token = tf.where(temperature > 0, sampled, greedy)
            token = tf.where(finished, tf.zeros_like(token), token)
            output = output.write(i, token)
            if self.stop_at_eos:
                finished = finished | tf.equal(token, EOS_ID)
            step_logits, new_states = self.model.step(token, states)
            return i + 1, step_logits, new_states, finished, output

        _, _, _, _, output = tf.while_loop(
            lambda i, *_: i < steps,
            body,
            (tf.constant(0), last, states, finished, output),
            maximum_iterations=MAX_NEW_TOKENS,
        )
        generated = tf.transpose(output.stack(), [1, 0])  # (batch, MAX_NEW_TOKENS)
        return generated[:, :steps]

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

    def _initial_state(self, batch_size):
        return {
            name: tf.zeros((batch_size, s)) for name, s in zip(self.state_names, self.state_sizes)
        }

    def _checked_generate(self, prompt_ids, max_new_tokens, temperature, top_k, seed):
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
        ]
        with tf.control_dependencies(checks):
            ids = self._generate_xla(
                tf.ensure_shape(prompt_ids, (None, None)), max_new_tokens, temperature, top_k, seed
            )
        return {"generated_ids": ids}

    def _tokenize(self, text):
        if self.level == "char":
            pieces = tf.strings.unicode_split(text, "UTF-8")
        else:
            if self.lowercase:
                text = tf.strings.lower(text, encoding="utf-8")
            if (
                not self.pretokenized
            ):  # words and single punctuation marks, like Python's \w+|[^\w\s]
                text = tf.strings.regex_replace(text, r"([^\w\s])", r" \1 ")
            pieces = tf.strings.split(text)
        ids = tf.cast(self.tokens_table.lookup(pieces), tf.int32)
        start = tf.fill([tf.shape(text)[0], 1], self.start_id)
        ids = tf.concat([tf.RaggedTensor.from_tensor(start), ids], axis=1)
        return {"token_ids": ids.to_tensor(default_value=PAD_ID)}

    def _detokenize(self, token_ids):
        keep = tf.reduce_all(tf.stack([tf.not_equal(token_ids, i) for i in SPECIAL_IDS]), axis=0)
        ragged = tf.ragged.boolean_mask(token_ids, keep)
        tokens = tf.gather(self.id_table, ragged)
        separator = "" if self.level == "char" else " "
        return {"text": tf.strings.reduce_join(tokens, axis=1, separator=separator)}


def export_saved_model(
    model: RNNLanguageModel,
    vocabulary: Vocabulary,
    export_dir,
    model_card: dict | None = None,
    allow_untrained: bool = False,
    overwrite: bool = False,
    tpu_batch_size: int = 8,
    tpu_sequence_length: int = 64,
) -> Path:
    """Export ``model`` as a SavedModel with the signatures listed in this module's docstring.

    Args:
        model: a built ``RNNLanguageModel`` (stateful or not, any layer implementation).
        vocabulary: its ``Vocabulary`` (saved beside the SavedModel and baked into
            ``tokenize``/``detokenize``).
        export_dir: new directory (must not exist unless ``overwrite``).
        model_card: extra facts for ``model_card.json`` (corpus, measured perplexities...).
        allow_untrained: export even if the model's optimizer never took a step.
        tpu_batch_size, tpu_sequence_length: the shapes of the fixed-shape TPU variants.

    Returns:
        The export directory.
    """
    if not isinstance(model, RNNLanguageModel):
        raise TypeError(f"Expected an RNNLanguageModel, got {type(model).__name__}.")
    if not model.built:
        raise ValueError("The model is not built: train it (or call it on data) before exporting.")
    optimizer = getattr(model, "optimizer", None)
    trained = optimizer is not None and int(optimizer.iterations.numpy()) > 0
    if not trained and not allow_untrained:
        raise ValueError(
            "The model has not been trained (its optimizer took no step); pass allow_untrained=True "
            "to export it anyway."
        )
    if vocabulary.size != model.vocabulary_size:
        raise ValueError(
            f"Vocabulary has {vocabulary.size} tokens but the model expects {model.vocabulary_size}."
        )
    export_dir = Path(export_dir)
    if export_dir.exists():
        if not overwrite:
            raise FileExistsError(
                f"{export_dir} already exists; pass overwrite=True to replace it."
            )
        shutil.rmtree(export_dir)

    server = LanguageModelServer(
        serving_copy(model), vocabulary, tpu_batch_size, tpu_sequence_length
    )
    signatures = {
        "serving_default": server.score,
        "score": server.score,
        "step": server.step,
        "initial_state": server.initial_state,
        "generate": server.generate,
        "tokenize": server.tokenize,
        "detokenize": server.detokenize,
        "score_tpu": server.score_tpu,
        "step_tpu": server.step_tpu,
    }
    options = tf.saved_model.SaveOptions(function_aliases={"tpu_func": server.score_tpu})
    tf.saved_model.save(server, str(export_dir), signatures=signatures, options=options)
    vocabulary.save(export_dir / "vocabulary.json")
    from keras_rnnlm import __version__

    card = {
        "config": {k: v for k, v in model.get_config().items() if k not in ("trainable", "dtype")},
        "vocabulary_size": model.vocabulary_size,
        "level": vocabulary.level,
        "state_names": server.state_names,
        "start_id": server.start_id,
        "signatures": sorted(signatures),
        "max_new_tokens": MAX_NEW_TOKENS,
        "keras_rnnlm_version": __version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        **(model_card or {}),
    }
    (export_dir / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
    return export_dir


def export_run(run_dir, export_dir, overwrite: bool = False) -> Path:
    """Export a ``keras-rnnlm train`` run directory (its measured perplexities go to the card)."""
    from keras_rnnlm.runs import CONFIG_FILE, METRICS_FILE, MODEL_FILE, VOCAB_FILE

    run_dir = Path(run_dir)
    for name in (MODEL_FILE, VOCAB_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir} is not a keras-rnnlm run: {name} is missing.")
    model = keras.saving.load_model(run_dir / MODEL_FILE)
    card = {}
    if (run_dir / METRICS_FILE).is_file():
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
        card["corpus"] = metrics.get("corpus")
        card["mode"] = metrics.get("mode")
        card["perplexity"] = {s: metrics[s] for s in ("train", "valid", "test") if s in metrics}
    if (run_dir / CONFIG_FILE).is_file():
        card["train_config"] = json.loads((run_dir / CONFIG_FILE).read_text())
    return export_saved_model(
        model, Vocabulary.load(run_dir / VOCAB_FILE), export_dir, card, overwrite=overwrite
    )


def saved_model_op_types(export_dir) -> set[str]:
    """Every op type in the SavedModel's graphs (to check, e.g., that no cuDNN op is inside)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((Path(export_dir) / "saved_model.pb").read_bytes())
    ops = set()
    for meta in proto.meta_graphs:
        ops.update(node.op for node in meta.graph_def.node)
        for function in meta.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops
