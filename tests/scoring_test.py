"""Scoring: sentence log-probabilities, text perplexity, the ``score`` CLI."""

import json
import math

import numpy as np
import pytest

from keras_rnnlm.cli import main
from keras_rnnlm.data.pipelines import encode_corpus, sentence_dataset
from keras_rnnlm.data.vocabulary import BOS_ID, EOS_ID, UNK_ID, Vocabulary
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.scoring import score_ids, score_sentences, text_perplexity, token_log_probs
from keras_rnnlm.training import evaluate_perplexity

SENTENCES = ["the students opened their books", "the cat sat", "a dog", "the cat opened a book"]


@pytest.fixture
def setup():
    vocabulary = Vocabulary.build(SENTENCES[:3])
    model = RNNLanguageModel(vocabulary.size, cell="gru", units=8, embedding_dim=8)
    model.build((None, None))
    return model, vocabulary


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_sentence_score_is_the_sum_of_forward_pass_log_probs(setup):
    model, vocabulary = setup
    scores = score_sentences(model, vocabulary, SENTENCES, batch_size=3)
    for text, score in zip(SENTENCES, scores, strict=True):
        seq = [BOS_ID, *vocabulary.encode(text), EOS_ID]
        log_probs = _log_softmax(np.asarray(model(np.array([seq[:-1]])), dtype=np.float64)[0])
        expected = [log_probs[t, seq[t + 1]] for t in range(len(seq) - 1)]
        np.testing.assert_allclose(score.token_log_probs, expected, atol=1e-5)
        assert score.log_prob == pytest.approx(sum(expected), abs=1e-4)
        assert score.num_tokens == len(seq) - 1
        assert score.tokens == [vocabulary.tokens[i] for i in seq[1:]]
        assert score.tokens[-1] == "<eos>"
        assert score.perplexity == pytest.approx(math.exp(-score.log_prob / score.num_tokens))
    assert "<unk>" in scores[3].tokens  # "opened a book": unknown words count as <unk>


def test_batching_and_padding_change_nothing(setup):
    model, vocabulary = setup
    encoded = [vocabulary.encode(s) for s in SENTENCES]
    together = score_ids(model, encoded, batch_size=4)
    alone = [score_ids(model, [ids], batch_size=1)[0] for ids in encoded]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a.token_log_probs, b.token_log_probs, atol=1e-5)
        assert a.tokens == b.tokens


def test_token_log_probs_masks_padding(setup):
    model, _ = setup
    log_probs, mask = token_log_probs(model, [[2, 5, 6, 0]], [[5, 6, 3, 0]])
    np.testing.assert_array_equal(np.asarray(mask), [[1, 1, 1, 0]])
    assert float(log_probs[0, 3]) == 0.0 and np.all(np.asarray(log_probs)[0, :3] < 0)


def test_text_perplexity_equals_training_evaluation(setup):
    model, vocabulary = setup
    result = text_perplexity(model, vocabulary, SENTENCES + [""], batch_size=2)
    encoded = encode_corpus(vocabulary, SENTENCES)
    reference = evaluate_perplexity(
        model, sentence_dataset(encoded, batch_size=2, max_length=None, shuffle=False)
    )
    assert result["perplexity"] == pytest.approx(reference["perplexity"], rel=1e-5)
    assert result["tokens"] == reference["tokens"] == sum(len(ids) + 1 for ids in encoded)
    assert result["sentences"] == 4
    with pytest.raises(ValueError):
        text_perplexity(model, vocabulary, ["", "  "])


def test_unknown_words_are_scored_as_unk(setup):
    model, vocabulary = setup
    (score,) = score_ids(model, [[UNK_ID, UNK_ID]])
    assert score.tokens == [UNK_ID, UNK_ID, EOS_ID]


def _run_dir(tmp_path, model, vocabulary):
    out = tmp_path / "run"
    out.mkdir()
    model.save(out / "model.keras")
    vocabulary.save(out / "vocabulary.json")
    return out


def test_cli_score_text_and_file(tmp_path, capsys, setup):
    model, vocabulary = setup
    run = _run_dir(tmp_path, model, vocabulary)
    assert main(["score", str(run), "--text", "the cat sat"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines[:-1]] == ["the", "cat", "sat", "<eos>"]
    (expected,) = score_sentences(model, vocabulary, ["the cat sat"])
    assert float(lines[-1].split()[1]) == pytest.approx(expected.log_prob, abs=1e-3)

    text_file = tmp_path / "text.txt"
    text_file.write_text("\n".join(SENTENCES) + "\n\n")
    assert main(["score", str(run), "--file", str(text_file)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] == pytest.approx(
        text_perplexity(model, vocabulary, SENTENCES)["perplexity"], rel=1e-6
    )
    assert main(["score", str(run), "--text", "  "]) == 2
