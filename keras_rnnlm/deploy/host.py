"""Driving a converted ``step`` on the host with the library's one tokenizer and one sampler.

A converted model holds only ``step`` (and ``score``); everything around it stays in one place:
``Vocabulary.encode`` turns text into ids and the ``keras_rnnlm.samplers`` strategies pick the
tokens, whatever runs the step. A *step callable* is any
``step(token_ids, states) -> (logits, states)`` on numpy arrays (``token_ids`` int32
``(batch,)``, ``states`` a list of float32 ``(batch, units)`` in ``state_names`` order):

* ``LiteRTStep(path)``: a ``step.tflite`` in ``ai_edge_litert``'s interpreter (batch 1; larger
  batches run row by row).
* ``OnnxStep(path)``: a ``step.onnx`` in ``onnxruntime`` (any batch).
* ``KerasStep(model)``: the Keras model's own ``model.step`` (the reference).

Example:

>>> step = LiteRTStep("/tmp/ptb_litert/step.tflite")
>>> generate_text_with_step(step, vocab, ["the company said"], GreedySampler(), 20)
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_rnnlm.data.vocabulary import EOS_ID, PAD_ID, Vocabulary
from keras_rnnlm.samplers import get_sampler, pad_prompts, resolve_max_new_tokens


class LiteRTStep:
    """A ``step.tflite`` as a step callable (``ai_edge_litert`` interpreter).

    Args:
        path: the ``step.tflite`` written by ``export_litert``.
        num_threads: interpreter threads (None: the runtime's default).

    Example:

    >>> step = LiteRTStep("/tmp/lm/step.tflite")
    >>> logits, states = step(np.array([3], np.int32), step.initial_state(1))
    """

    def __init__(self, path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner("step")
        inputs = self.runner.get_input_details()
        names = sorted((n for n in inputs if n != "token"), key=lambda n: (n[2:], n[0] == "c"))
        self.state_names = names  # h_0, c_0, h_1, c_1...
        self.state_sizes = [int(inputs[n]["shape"][-1]) for n in names]

    def initial_state(self, batch_size: int) -> list[np.ndarray]:
        return [np.zeros((batch_size, s), np.float32) for s in self.state_sizes]

    def __call__(self, token_ids, states):
        token_ids = np.asarray(token_ids, np.int32)
        rows = []
        for row in range(token_ids.shape[0]):  # the model has batch 1
            feed = {
                n: np.asarray(s[row : row + 1], np.float32)
                for n, s in zip(self.state_names, states)
            }
            rows.append(self.runner(token=token_ids[row : row + 1], **feed))
        logits = np.concatenate([r["logits"] for r in rows])
        return logits, [np.concatenate([r[n] for r in rows]) for n in self.state_names]


class OnnxStep:
    """A ``step.onnx`` as a step callable (``onnxruntime``).

    Args:
        path: the ``step.onnx`` written by ``export_onnx``.
        num_threads: onnxruntime intra-op threads (None: the runtime's default).

    Example:

    >>> step = OnnxStep("/tmp/lm/step.onnx")
    >>> logits, states = step(np.array([3, 3], np.int32), step.initial_state(2))
    """

    def __init__(self, path, num_threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.state_names = [n for n in inputs if n != "token"]
        self.state_sizes = [int(inputs[n].shape[-1]) for n in self.state_names]
        self.outputs = ["logits"] + [f"{n}_out" for n in self.state_names]

    def initial_state(self, batch_size: int) -> list[np.ndarray]:
        return [np.zeros((batch_size, s), np.float32) for s in self.state_sizes]

    def __call__(self, token_ids, states):
        feed = {"token": np.asarray(token_ids, np.int32)}
        feed.update({n: np.asarray(s, np.float32) for n, s in zip(self.state_names, states)})
        logits, *new_states = self.session.run(self.outputs, feed)
        return logits, new_states


class KerasStep:
    """``model.step`` of a stateless ``RNNLanguageModel`` as a step callable (the reference).

    Example:

    >>> logits, states = KerasStep(model)(np.array([3]), KerasStep(model).initial_state(1))
    """

    def __init__(self, model):
        self.model = model
        self.state_sizes = [int(s) for sizes in model.state_sizes for s in sizes]

    def initial_state(self, batch_size: int) -> list[np.ndarray]:
        return [np.zeros((batch_size, s), np.float32) for s in self.state_sizes]

    def __call__(self, token_ids, states):
        nested, i = [], 0
        for sizes in self.model.state_sizes:
            nested.append([tf.constant(s) for s in states[i : i + len(sizes)]])
            i += len(sizes)
        logits, new_states = self.model.step(np.asarray(token_ids, np.int32), nested)
        return np.asarray(logits), [np.asarray(s) for layer in new_states for s in layer]


def prefill_with_step(step, prompt_ids) -> tuple[np.ndarray, list[np.ndarray]]:
    """Read right-padded prompts token by token: the next logits and states after each row.

    Args:
        step: a step callable.
        prompt_ids: int ``(batch, time)`` right-padded with 0, every row non-empty.

    Returns:
        ``(logits, states)`` after each row's last real token (padding keeps the states).

    Example:

    >>> logits, states = prefill_with_step(step, [[3, 17, 9]])
    """
    prompt_ids = np.asarray(prompt_ids, np.int32)
    states = step.initial_state(prompt_ids.shape[0])
    last = None
    for t in range(prompt_ids.shape[1]):
        logits, states = step(prompt_ids[:, t], states)
        real = (prompt_ids[:, t] != PAD_ID)[:, None]
        last = logits if last is None else np.where(real, logits, last)
    return last, states


def generate_with_step(
    step,
    prompt_ids,
    sampler="greedy",
    max_new_tokens: int | None = None,
    end_token_id: int | None = EOS_ID,
    *,
    max_length: int | None = None,
) -> np.ndarray:
    """``keras_rnnlm.samplers.generate`` with a step callable instead of a Keras model.

    The sampler's own loop runs (eagerly) with ``next_fn`` calling ``step``, so every strategy
    of ``keras_rnnlm.samplers`` except ``BeamSampler`` works unchanged.

    Args:
        step: a step callable (``LiteRTStep``, ``OnnxStep``, ``KerasStep``).
        prompt_ids: id lists or an int ``(batch, time)`` array right-padded with 0.
        sampler: a ``Sampler`` or a name for ``get_sampler``.
        max_new_tokens: maximum number of generated tokens, the prompt not counted (None:
            ``keras_rnnlm.samplers.DEFAULT_NEW_TOKENS``).
        end_token_id: a row stops after this id; None never stops early.
        max_length: deprecated name of ``max_new_tokens`` here (``DeprecationWarning``).

    Returns:
        int32 ``(batch, max_new_tokens)`` generated ids, 0 after a row's end token.

    Example:

    >>> generate_with_step(LiteRTStep(path), [[3, 17]], GreedySampler(), max_new_tokens=10)
    """
    max_new_tokens = resolve_max_new_tokens(max_new_tokens, max_length, "generate_with_step")
    sampler = get_sampler(sampler)
    if not isinstance(prompt_ids, np.ndarray):
        prompt_ids = pad_prompts(prompt_ids)
    logits, states = prefill_with_step(step, prompt_ids)

    def next_fn(token_ids, states):
        logits, new_states = step(np.asarray(token_ids), [np.asarray(s) for s in states])
        return tf.constant(logits), [tf.constant(s) for s in new_states]

    tokens = sampler(
        next_fn,
        tf.constant(logits),
        [tf.constant(s) for s in states],
        max_new_tokens,
        end_token_id,
        seed=sampler.resolve_seed(),
    )
    return np.asarray(tokens)


def generate_text_with_step(
    step,
    vocabulary: Vocabulary,
    prompts: Sequence[str],
    sampler="greedy",
    max_new_tokens: int | None = None,
    *,
    max_length: int | None = None,
) -> list[str]:
    """Continue text prompts through a step callable, as ``samplers.generate_text`` does.

    Each prompt is ``[vocabulary.start_id] + vocabulary.encode(prompt)``; stream-trained
    vocabularies (``separates_with_eos``) do not stop at ``<eos>``.

    Args:
        step: a step callable (``LiteRTStep``, ``OnnxStep``, ``KerasStep``).
        vocabulary: the model's ``Vocabulary``.
        prompts: text prompts.
        sampler: a ``Sampler`` or a name for ``get_sampler``.
        max_new_tokens: maximum number of generated tokens per prompt, the prompt not counted
            (None: ``keras_rnnlm.samplers.DEFAULT_NEW_TOKENS``).
        max_length: deprecated name of ``max_new_tokens`` here (``DeprecationWarning``).

    Returns:
        One continuation per prompt (special tokens dropped).

    Example:

    >>> generate_text_with_step(LiteRTStep(path), vocab, ["the company said"], "greedy", 20)
    """
    max_new_tokens = resolve_max_new_tokens(max_new_tokens, max_length, "generate_text_with_step")
    encoded = [[vocabulary.start_id, *vocabulary.encode(p)] for p in prompts]
    end_token_id = None if vocabulary.separates_with_eos else EOS_ID
    tokens = generate_with_step(step, encoded, sampler, max_new_tokens, end_token_id)
    return [vocabulary.decode(row) for row in tokens]


def stream_log_probs(step, token_ids) -> np.ndarray:
    """``log P(token_ids[t + 1] | token_ids[:t + 1])`` of one stream read through ``step``.

    Args:
        step: a step callable.
        token_ids: int ``(time,)``, starting with the context start (e.g. ``<eos>`` for a
            stream-trained model).

    Returns:
        float64 ``(time - 1,)`` log-probabilities; ``exp(-mean)`` is the stream's perplexity.

    Example:

    >>> ids = [vocab.start_id] + vocab.encode("the cat sat") + [3]
    >>> np.exp(-stream_log_probs(LiteRTStep(path), ids).mean())
    """
    token_ids = np.asarray(token_ids, np.int32)
    states = step.initial_state(1)
    out = np.zeros(len(token_ids) - 1)
    for t in range(len(token_ids) - 1):
        logits, states = step(token_ids[t : t + 1], states)
        z = logits[0].astype(np.float64)
        z = z - z.max()
        out[t] = z[token_ids[t + 1]] - np.log(np.exp(z).sum())
    return out
