"""Tokens <-> ids: padding is 0, ``<unk>`` is 1, then ``<bos>``/``<eos>``, then the corpus tokens.

The id layout is the one of ``keras.layers.StringLookup(mask_token="<pad>", oov_token="<unk>")``,
so ``Vocabulary.lookup_layer()`` turns strings into the same ids inside a TensorFlow graph (used
by SavedModel exports), while ``encode``/``decode`` work on Python strings for data pipelines.
"""

import collections
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import keras

from keras_rnnlm.data.tokenizer import LEVELS as LEVELS  # re-exported
from keras_rnnlm.data.tokenizer import check_level, tokenize_lines

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def tokenize(
    text: str, level: str = "word", lowercase: bool = False, pretokenized: bool = False
) -> list[str]:
    """Split one sentence into tokens: words (and punctuation) or characters.

    The rules are those of ``keras_rnnlm.data.tokenizer`` (the same TensorFlow function the
    SavedModel export runs); for many lines, ``tokenize_lines`` is much faster (one call).

    Example:

    >>> tokenize("Zürich, straße")
    ['Zürich', ',', 'straße']
    """
    return tokenize_lines([text], level, lowercase, pretokenized)[0]


class Vocabulary:
    """A fixed token list with ids; id 0 is padding and never a real token.

    Args:
        tokens: the corpus tokens, most frequent first, without the special tokens.
        level: ``"word"`` or ``"char"``.
        lowercase: lower-case words before lookup (word level only).
        pretokenized: split words on whitespace only (corpora like PTB that are tokenised).
        sentence_start: the token a sentence's context starts from: ``"<bos>"`` for models
            trained on sentence batches (``<bos> w1 .. wn <eos>``), ``"<eos>"`` for models
            trained on a token stream (where every sentence follows the previous ``<eos>``).
            Prompts and scored sentences start with it; with ``"<eos>"``, ``<eos>`` is a
            sentence separator and decodes as a line break.

    Example:

    >>> vocab = Vocabulary.build(["the cat sat", "the dog"], level="word")
    >>> vocab.encode("the cat")
    [4, 5]
    """

    def __init__(
        self,
        tokens: Sequence[str],
        level: str = "word",
        lowercase: bool = False,
        pretokenized: bool = False,
        sentence_start: str = BOS,
    ):
        check_level(level)
        if sentence_start not in (BOS, EOS):
            raise ValueError(f"sentence_start must be {BOS!r} or {EOS!r}, got {sentence_start!r}.")
        self.sentence_start = sentence_start
        tokens = [t for t in tokens if t not in SPECIAL_TOKENS]
        if len(set(tokens)) != len(tokens):
            raise ValueError("Vocabulary tokens must be unique.")
        self.level = level
        self.lowercase = lowercase
        self.pretokenized = pretokenized
        self.tokens = list(SPECIAL_TOKENS) + tokens
        self._ids = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(
        cls,
        sentences: Iterable[str],
        level: str = "word",
        max_size: int | None = None,
        min_count: int = 1,
        lowercase: bool = False,
        pretokenized: bool = False,
        sentence_start: str = BOS,
    ) -> "Vocabulary":
        """Count tokens in ``sentences``; keep the ``max_size`` most frequent with ``min_count``."""
        check_level(level)
        counts = collections.Counter()
        for tokens in tokenize_lines(list(sentences), level, lowercase, pretokenized):
            counts.update(tokens)
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        kept = [
            t for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count
        ]
        if max_size is not None:
            kept = kept[: max(0, max_size - len(SPECIAL_TOKENS))]
        return cls(kept, level, lowercase, pretokenized, sentence_start)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def size(self) -> int:
        """The ``vocabulary_size`` a model needs (special tokens included)."""
        return len(self.tokens)

    @property
    def start_id(self) -> int:
        """Id that starts a prompt or a scored sentence (see ``sentence_start``)."""
        return self._ids[self.sentence_start]

    @property
    def separates_with_eos(self) -> bool:
        """True for stream-trained models: ``<eos>`` separates sentences, it ends nothing."""
        return self.sentence_start == EOS

    def token_to_id(self, token: str) -> int:
        return self._ids.get(token, UNK_ID)

    def tokenize(self, text: str) -> list[str]:
        """Tokens of one text (``keras_rnnlm.data.tokenizer`` rules with this vocabulary's options)."""
        return self.tokenize_batch([text])[0]

    def tokenize_batch(self, texts: Sequence[str]) -> list[list[str]]:
        """Tokens of many texts in one TensorFlow call (much faster than one call per text)."""
        return tokenize_lines(texts, self.level, self.lowercase, self.pretokenized)

    def encode(self, text: str) -> list[int]:
        """Ids of one sentence's tokens (no boundary tokens added)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Ids of many sentences' tokens, tokenized in one batched call (no boundary tokens).

        Example:

        >>> vocab.encode_batch(["the cat", "the dog"])
        [[4, 5], [4, 6]]
        """
        ids = self._ids
        return [[ids.get(t, UNK_ID) for t in tokens] for tokens in self.tokenize_batch(texts)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of ``ids``; padding, ``<bos>`` and ``<eos>`` are dropped when ``skip_special``."""
        tokens = []
        for i in ids:
            i = int(i)
            if skip_special and i == EOS_ID and self.separates_with_eos:
                tokens.append("\n")
                continue
            if skip_special and i in (PAD_ID, BOS_ID, EOS_ID):
                continue
            tokens.append(self.tokens[i] if 0 <= i < len(self.tokens) else UNK)
        text = ("" if self.level == "char" else " ").join(tokens)
        return text.replace(" \n ", "\n") if self.level == "word" else text

    def unigram_perplexity(
        self, sentences: Iterable[Sequence[int]], eval_sentences: Iterable[Sequence[int]]
    ) -> float:
        """Perplexity of an add-one unigram model fit on ``sentences``, on ``eval_sentences``.

        Both are id lists *including* the predicted ``<eos>``; the baseline an LM must beat.
        """
        import math

        counts = collections.Counter()
        for ids in sentences:
            counts.update(ids)
        total = sum(counts.values()) + self.size
        nll, n = 0.0, 0
        for ids in eval_sentences:
            for i in ids:
                nll -= math.log((counts[i] + 1) / total)
                n += 1
        return math.exp(nll / max(n, 1))

    def lookup_layer(self, invert: bool = False) -> keras.layers.StringLookup:
        """A ``StringLookup`` giving the same ids in-graph (``invert=True``: ids -> tokens)."""
        return keras.layers.StringLookup(
            vocabulary=self.tokens[2:], mask_token=PAD, oov_token=UNK, invert=invert
        )

    def get_config(self) -> dict:
        return {
            "level": self.level,
            "lowercase": self.lowercase,
            "pretokenized": self.pretokenized,
            "sentence_start": self.sentence_start,
            "tokens": self.tokens[len(SPECIAL_TOKENS) :],
        }

    def save(self, path) -> None:
        """Write ``vocabulary.json`` (JSON keeps characters like newline or space intact)."""
        Path(path).write_text(
            json.dumps(self.get_config(), ensure_ascii=False, indent=0), encoding="utf-8"
        )

    @classmethod
    def load(cls, path) -> "Vocabulary":
        config = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**config)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.get_config() == other.get_config()
