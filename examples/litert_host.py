"""Greedy text continuation with a LiteRT ``step.tflite``: numpy + ai_edge_litert, no TensorFlow.

This is what an app re-implements on device (Kotlin, Swift, C++...): read ``vocabulary.json``,
turn text into ids, run the ``step`` signature once per token carrying the states, pick tokens.
The library itself never duplicates this: on a host with ``keras_rnnlm`` installed,
``keras_rnnlm.deploy.host`` drives the same file with the library's ``Vocabulary`` and samplers.

Tokenization rules (``vocabulary.json`` holds ``level``, ``lowercase``, ``pretokenized``,
``sentence_start`` and ``tokens``; ``model_card.json`` repeats them under ``tokenization``):

* ids 0-3 are ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>``; id ``4 + i`` is ``tokens[i]``.
* ``level == "char"``: every character (Unicode code point) is a token.
* ``level == "word"``: lower-case the text if ``lowercase``; then split on whitespace if
  ``pretokenized`` (PTB), else take the matches of ``\\w+|[^\\w\\s]`` (Unicode word characters,
  or one other non-space character).
* a token not in the vocabulary is ``<unk>`` (1).
* a context starts with ``sentence_start``: ``<bos>`` (2), or ``<eos>`` (3) for models trained
  on a token stream (there ``<eos>`` separates sentences and generation does not stop at it).
* generation never emits ``<pad>``, ``<unk>`` or ``<bos>`` (their logits are ignored).
* decoding joins word tokens with spaces (characters with nothing); ``<eos>`` becomes a line
  break for stream models and ends the text otherwise.

Usage::

    keras-rnnlm export saved_models/ptb_word_lstm_small /tmp/ptb_litert --format litert
    python examples/litert_host.py /tmp/ptb_litert "the company said" --max-new-tokens 20
"""

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")


class Tokenizer:
    """``vocabulary.json`` -> text to ids and back, by the rules of the module docstring."""

    def __init__(self, path):
        config = json.loads(Path(path).read_text(encoding="utf-8"))
        self.level = config["level"]
        self.lowercase = config["lowercase"]
        self.pretokenized = config["pretokenized"]
        self.tokens = SPECIAL_TOKENS + config["tokens"]
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        self.start_id = self.ids[config["sentence_start"]]
        self.stream = config["sentence_start"] == "<eos>"

    def encode(self, text: str) -> list[int]:
        if self.level == "char":
            pieces = list(text)
        else:
            text = text.lower() if self.lowercase else text
            pieces = text.split() if self.pretokenized else WORD_PATTERN.findall(text)
        return [self.ids.get(piece, UNK_ID) for piece in pieces]

    def decode(self, ids) -> str:
        dropped = (PAD_ID, BOS_ID) if self.stream else (PAD_ID, BOS_ID, EOS_ID)
        pieces = ["\n" if i == EOS_ID else self.tokens[i] for i in ids if i not in dropped]
        text = ("" if self.level == "char" else " ").join(pieces)
        return text.replace(" \n ", "\n")


class StepModel:
    """The ``step`` signature of ``step.tflite``: one token in, logits and new states out."""

    def __init__(self, path, num_threads=None):
        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner("step")
        inputs = self.runner.get_input_details()
        self.state_shapes = {n: d["shape"] for n, d in inputs.items() if n != "token"}

    def initial_state(self) -> dict:
        return {n: np.zeros(shape, np.float32) for n, shape in self.state_shapes.items()}

    def __call__(self, token: int, states: dict):
        out = self.runner(token=np.array([token], np.int32), **states)
        return out["logits"][0], {n: out[n] for n in self.state_shapes}


def greedy_continuation(step: StepModel, tokenizer: Tokenizer, prompt: str, max_new_tokens: int):
    """Greedy ids after ``prompt``, and the smallest top-1/top-2 logit gap along the way."""
    states = step.initial_state()
    for token in [tokenizer.start_id, *tokenizer.encode(prompt)]:
        logits, states = step(token, states)
    generated, gaps = [], []
    for _ in range(max_new_tokens):
        scores = logits.copy()
        scores[[PAD_ID, UNK_ID, BOS_ID]] = -np.inf  # never emitted
        top2 = np.sort(scores)[-2:]
        gaps.append(float(top2[1] - top2[0]))
        token = int(np.argmax(scores))
        generated.append(token)
        if token == EOS_ID and not tokenizer.stream:
            break
        logits, states = step(token, states)
    return generated, min(gaps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="a directory written by export --format litert")
    parser.add_argument("prompt")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--num-threads", type=int, default=None)
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir)
    tokenizer = Tokenizer(model_dir / "vocabulary.json")
    step = StepModel(model_dir / "step.tflite", args.num_threads)
    ids, gap = greedy_continuation(step, tokenizer, args.prompt, args.max_new_tokens)
    print(json.dumps({"ids": ids, "text": tokenizer.decode(ids), "min_top2_gap": gap}))


if __name__ == "__main__":
    sys.exit(main())
