"""The one tokenizer: text -> tokens in plain TensorFlow string ops, for Python and for serving.

``tokenize_tensor`` is the single definition. ``Vocabulary.tokenize``/``encode`` run it eagerly
(``tokenize_lines`` batches many lines into one call), and the SavedModel export traces the same
function into its ``tokenize`` signature, so a model is scored and prompted with the ids it was
trained on. Only core ``tf.strings`` ops are used (RE2 regular expressions, ICU lowercasing), so an
export loads in stock TensorFlow / TF Serving without ``tensorflow-text`` or any custom op.

The rules:

* **Characters** (``level="char"``): Unicode code points (``tf.strings.unicode_split``), like
  Python's ``list(text)``; a combining mark is its own character.
* **Whitespace**: Python's ``str.isspace`` set, i.e. ASCII ``\\t``-``\\r``, ``\\x1c``-``\\x1f``,
  U+0085 and every ``\\p{Z}`` separator (space, no-break space U+00A0, U+2000-U+200A, U+2028,
  U+2029, U+202F, U+205F, ideographic space U+3000...). Zero-width space U+200B is not whitespace.
* **Words** (``level="word"``): a run of letters, combining marks, digits and ``_``
  (``[\\p{L}\\p{M}\\p{N}_]+``), or any other single non-space character (punctuation, symbols,
  emoji). Combining marks stay inside their word, so NFD text (``"cafe\\u0301"``) keeps its accents
  attached. Han, kana and other scripts without spaces are letters: a run of them is one word.
  An emoji followed by a variation selector (U+FE0F, a mark) gives two tokens.
* **Pretokenized** corpora (PTB): words are split on whitespace only.
* **Lowercasing** (``lowercase=True``, word level): ``tf.strings.lower(..., encoding="utf-8")``,
  ICU's full Unicode lowercasing, which gives what Python's ``str.lower`` gives on the cases
  checked in ``tests/tokenizer_test.py``: Greek final sigma is context-sensitive (``"ΟΔΟΣ"`` ->
  ``"οδος"``, final ``ς``; ``"ΣΑ"`` -> ``"σα"``), Turkish ``"İ"`` (U+0130) becomes ``"i"`` +
  combining dot above U+0307 (two code points, one word since the dot is a mark), ``"ẞ"`` -> ``"ß"``.
  It is language-independent (no Turkish dotless-i rule for ``"I"``).
* **No Unicode normalisation**: core TensorFlow has no normalisation op (``unicode_transcode``
  changes encodings, not forms), so text is not NFC-normalised: ``"café"`` written with U+00E9
  and with ``e`` + U+0301 are two different tokens. Normalise text before training and serving
  if your sources mix forms.

Before this module, Python's ``re`` ``\\w+|[^\\w\\s]`` was used. On ASCII text and on precomposed
text the result is the same; it differs where ``\\w`` excluded combining marks (NFD accents were
split off as punctuation) and where RE2's ``\\w`` is ASCII-only (the old export graph).
"""

from collections.abc import Sequence

import tensorflow as tf

LEVELS = ("word", "char")

#: One whitespace character, as Python's ``str.isspace`` (RE2 syntax).
WHITESPACE = r"[\t-\r\x{1c}-\x{1f}\x{85}\p{Z}]"
#: One character of a word: letters, combining marks, digits, underscore.
WORD_CHARACTER = r"[\p{L}\p{M}\p{N}_]"
#: Lines per eager call in ``tokenize_lines`` (bounds memory on big corpora).
CHUNK_SIZE = 8192


def check_level(level: str) -> None:
    """Raise ``ValueError`` unless ``level`` is ``"word"`` or ``"char"``."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}.")


def tokenize_tensor(
    text: tf.Tensor, level: str = "word", lowercase: bool = False, pretokenized: bool = False
) -> tf.RaggedTensor:
    """Split a batch of UTF-8 strings into tokens (the definition in the module docstring).

    Args:
        text: string tensor ``(batch,)``.
        level: ``"word"`` or ``"char"``.
        lowercase: lowercase words first (word level only; ICU lowercasing).
        pretokenized: split words on whitespace only.

    Returns:
        A string ``RaggedTensor`` ``(batch, None)`` of tokens.

    Example:

    >>> tokenize_tensor(tf.constant(["Zürich, straße"])).to_list()
    [[b'Z\\xc3\\xbcrich', b',', b'stra\\xc3\\x9fe']]
    """
    check_level(level)
    text = tf.convert_to_tensor(text, dtype=tf.string)
    if level == "char":
        return tf.strings.unicode_split(text, "UTF-8")
    if lowercase:
        text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, WHITESPACE + "+", " ")
    if not pretokenized:  # every non-word, non-space character becomes its own token
        text = tf.strings.regex_replace(text, r"([^\p{L}\p{M}\p{N}_ ])", r" \1 ")
    return tf.strings.split(text)  # on (now only ASCII) whitespace, runs collapsed


def tokenize_lines(
    lines: Sequence[str], level: str = "word", lowercase: bool = False, pretokenized: bool = False
) -> list[list[str]]:
    """``tokenize_tensor`` run eagerly on Python strings, ``CHUNK_SIZE`` lines per call.

    Args:
        lines: the texts (one sentence or line each).
        level, lowercase, pretokenized: as for ``tokenize_tensor``.

    Returns:
        One token list per line.

    Example:

    >>> tokenize_lines(["naïve café", "ΟΔΟΣ"], lowercase=True)
    [['naïve', 'café'], ['οδος']]
    """
    check_level(level)
    lines = list(lines)
    out = []
    for start in range(0, len(lines), CHUNK_SIZE):
        chunk = tf.constant(lines[start : start + CHUNK_SIZE], dtype=tf.string)
        ragged = tokenize_tensor(chunk, level, lowercase, pretokenized)
        out.extend([piece.decode("utf-8") for piece in row] for row in ragged.to_list())
    return out
