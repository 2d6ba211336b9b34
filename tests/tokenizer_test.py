"""The one tokenizer: its rules, and the same ids and scores from the library and a TF-only export."""

import json
import random
import re
import string
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from keras_rnnlm.data.tokenizer import tokenize_lines
from keras_rnnlm.data.vocabulary import Vocabulary, tokenize
from keras_rnnlm.export import export_saved_model
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.scoring import score_sentences

NBSP, IDEOGRAPHIC_SPACE, ACUTE = "\u00a0", "\u3000", "\u0301"
MULTILINGUAL = [
    "Le café coûte 3€ — naïve Zürich",
    "Die Straße ist groß, sagte Jürgen.",
    "ΟΔΟΣ ΚΑΙ ΘΑΛΑΣΣΑ: η θάλασσα είναι ωραία",
    "İstanbul ve IĞDIR çok güzel!",
    "我们喜欢学习语言模型。中文没有空格",
    "emoji 😀 and 🎉🎉 with text",
    f"no{NBSP}break and ideographic{IDEOGRAPHIC_SPACE}space",
    f"cafe{ACUTE} nai{chr(0x308)}ve re{ACUTE}sume{ACUTE}",  # NFD accents
]


@pytest.mark.parametrize(
    "text, options, expected",
    [
        ("Le café coûte 3€ — naïve Zürich straße", {},
         ["Le", "café", "coûte", "3", "€", "—", "naïve", "Zürich", "straße"]),
        ("ΟΔΟΣ ΣΑΣ Σ", {"lowercase": True}, ["οδος", "σας", "σ"]),  # final sigma by context
        ("İstanbul IŞIK", {"lowercase": True}, ["i\u0307stanbul", "işik"]),  # ICU, not Turkish rules
        ("Straße STRASSE", {"lowercase": True}, ["straße", "strasse"]),
        ("中文分词，测试", {}, ["中文分词", "，", "测试"]),
        ("a😀b 🎉🎉", {}, ["a", "😀", "b", "🎉", "🎉"]),
        (f"a{NBSP}b{IDEOGRAPHIC_SPACE}c\u2028d\u200be", {}, ["a", "b", "c", "d", "\u200b", "e"]),
        (f"cafe{ACUTE}, n{ACUTE}", {}, [f"cafe{ACUTE}", ",", f"n{ACUTE}"]),  # marks stay inside
        (f"a,b  c{NBSP}d{IDEOGRAPHIC_SPACE}", {"pretokenized": True}, ["a,b", "c", "d"]),
        (f"e{ACUTE}x 😀", {"level": "char"}, ["e", ACUTE, "x", " ", "😀"]),
        ("x_1 ²", {}, ["x_1", "²"]),
        ("", {}, []),
    ],
)  # fmt: skip
def test_tokenizer_rules(text, options, expected):
    assert tokenize(text, **options) == expected


def test_ascii_text_tokenizes_as_the_former_python_regex():
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \t_"
    lines = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    former = re.compile(r"\w+|[^\w\s]")
    assert tokenize_lines(lines) == [former.findall(line) for line in lines]
    assert tokenize_lines(lines, lowercase=True) == [former.findall(s.lower()) for s in lines]
    assert tokenize_lines(lines, pretokenized=True) == [line.split() for line in lines]
    assert tokenize_lines(lines, level="char") == [list(line) for line in lines]


def test_python_whitespace_and_lowercasing_agree_on_the_multilingual_text():
    for text in MULTILINGUAL:
        assert tokenize(text, pretokenized=True) == text.split()
        assert tokenize(text, lowercase=True, pretokenized=True) == text.lower().split()


def test_batched_and_single_calls_agree():
    vocabulary = Vocabulary.build(MULTILINGUAL, lowercase=True)
    assert vocabulary.encode_batch(MULTILINGUAL) == [vocabulary.encode(t) for t in MULTILINGUAL]
    assert vocabulary.tokenize_batch(MULTILINGUAL[:2]) == [
        vocabulary.tokenize(t) for t in MULTILINGUAL[:2]
    ]
    with pytest.raises(ValueError, match="level"):
        tokenize("x", level="byte")


CONSUMER = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    export_dir, texts_path, out_path = sys.argv[1:4]
    texts = json.load(open(texts_path, encoding="utf-8"))
    loaded = tf.saved_model.load(export_dir)
    ids = loaded.signatures["tokenize"](text=tf.constant(texts))["token_ids"].numpy()
    scored = loaded.signatures["score_text"](text=tf.constant(texts))
    out = {
        "ids": [[int(i) for i in row if i != 0] for row in ids],
        "log_prob": [float(x) for x in scored["log_prob"].numpy()],
        "num_tokens": [int(x) for x in scored["num_tokens"].numpy()],
    }
    assert not any(m.split(".")[0] == "keras_rnnlm" for m in sys.modules), "keras_rnnlm imported"
    json.dump(out, open(out_path, "w"))
    print("consumer ok")
    """
)


@pytest.mark.parametrize(
    "options",
    [{"lowercase": True}, {"lowercase": False}, {"level": "char"}],
    ids=["words_lowercased", "words", "chars"],
)
def test_export_tokenizes_and_scores_like_the_library(tmp_path, options):
    train = MULTILINGUAL[::2] + [t.lower() for t in MULTILINGUAL[1::2]]
    vocabulary = Vocabulary.build(train, **options)
    model = RNNLanguageModel(vocabulary.size, units=8, embedding_dim=8)
    model.build((None, None))
    export_dir = export_saved_model(model, vocabulary, tmp_path / "export", allow_untrained=True)
    (tmp_path / "texts.json").write_text(json.dumps(MULTILINGUAL), encoding="utf-8")
    (tmp_path / "consumer.py").write_text(CONSUMER)
    paths = [str(tmp_path / n) for n in ("consumer.py", "texts.json", "out.json")]
    proc = subprocess.run(
        [sys.executable, paths[0], str(export_dir), *paths[1:]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and "consumer ok" in proc.stdout, proc.stderr[-3000:]
    served = json.loads((tmp_path / "out.json").read_text())

    library = [[vocabulary.start_id, *ids] for ids in vocabulary.encode_batch(MULTILINGUAL)]
    assert served["ids"] == library
    known = sum(i > 3 for row in library for i in row)
    assert known > len(MULTILINGUAL) * 3  # the vocabulary covers the text: a meaningful check
    scores = score_sentences(model, vocabulary, MULTILINGUAL)
    assert served["num_tokens"] == [s.num_tokens for s in scores]
    assert served["num_tokens"] == [len(row) for row in library]  # tokens + <eos>
    np.testing.assert_allclose(served["log_prob"], [s.log_prob for s in scores], atol=1e-4)


SAVED = Path(__file__).resolve().parents[1] / "saved_models"


def test_shipped_vocabularies_encode_their_corpora_as_before(ptb_dir, shakespeare_dir):
    """PTB (pretokenized words) and Shakespeare (characters) get the ids of the former Python
    rules, ``str.split`` and ``list``: the shipped models see the text they were trained on."""
    ptb = Vocabulary.load(SAVED / "ptb_word_lstm_small" / "vocabulary.json")
    lines = (ptb_dir / "ptb.test.txt").read_text().splitlines()
    former = [[ptb.token_to_id(t) for t in line.split()] for line in lines]
    assert ptb.encode_batch(lines) == former
    chars = Vocabulary.load(SAVED / "shakespeare_char_lstm" / "vocabulary.json")
    lines = (shakespeare_dir / "input.txt").read_text(encoding="utf-8").splitlines()[-3000:]
    assert chars.encode_batch(lines) == [[chars.token_to_id(c) for c in line] for line in lines]
