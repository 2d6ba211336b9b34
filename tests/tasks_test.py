"""Known-entropy check: a language model trained with model.fit reaches the source entropy."""

import math
import warnings

import keras
import numpy as np
import pytest

from keras_rnnlm.data.pipelines import sentence_dataset
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.tasks import MarkovSource
from keras_rnnlm.training import EpochDecay, compile_language_model, evaluate_perplexity


def test_markov_entropy_matches_sample_average():
    source = MarkovSource(seed=3)
    nll, count = source.sentence_nll(source.sample(20000, seed=1))
    assert abs(nll / count - source.entropy_per_token()) < 0.01
    assert source.perplexity() < 0.7 * source.unigram_perplexity()


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_sentence_dataset_states_its_number_of_batches(drop_remainder):
    sentences = MarkovSource(seed=3).sample(300, seed=1)  # lengths 1 to ~40: several buckets
    dataset = sentence_dataset(
        sentences, batch_size=16, max_length=20, drop_remainder=drop_remainder, seed=0
    )
    batches = list(dataset)
    assert int(dataset.cardinality()) == len(batches) > 300 // 16
    assert all(len(x) == 16 for x, _ in batches) or not drop_remainder
    # Keras sizes the epoch from it: no "ran out of data" warning after the first epoch
    model = RNNLanguageModel(MarkovSource(seed=3).vocabulary_size, num_layers=1, units=8)
    compile_language_model(model, "sgd", learning_rate=0.1, jit_compile=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        history = model.fit(dataset, epochs=2, verbose=0, shuffle=False)
    assert len(history.history["loss"]) == 2


@pytest.mark.slow
def test_trained_lm_reaches_the_source_perplexity():
    source = MarkovSource(num_symbols=6, end_probability=0.1, concentration=0.3, seed=0)
    train, valid = source.sample(8000, seed=1), source.sample(3000, seed=2)
    model = RNNLanguageModel(
        source.vocabulary_size, cell="lstm", num_layers=1, units=64, embedding_dim=64
    )
    compile_language_model(model, "adam", learning_rate=0.01, clip_norm=1.0, jit_compile=False)
    # Length-bucketed batches are not i.i.d. (a batch of 3-token sentences says "<eos> comes
    # third"), so the rate must decay for the model to settle on the average.
    schedule = keras.callbacks.LearningRateScheduler(
        EpochDecay(0.01, decay_start_epoch=2, decay_factor=4.0)
    )
    model.fit(
        sentence_dataset(train, batch_size=32, seed=0),
        epochs=6,
        callbacks=[schedule],
        verbose=0,
        shuffle=False,  # sentence_dataset shuffles
    )
    result = evaluate_perplexity(model, sentence_dataset(valid, batch_size=64, shuffle=False))

    true_ppl = source.perplexity()
    nll, count = source.sentence_nll(valid)
    assert result["tokens"] == count  # every symbol and every <eos> predicted once
    oracle_ppl = math.exp(nll / count)  # the true model on this very sample
    print(
        f"trained {result['perplexity']:.3f}  oracle {oracle_ppl:.3f}  exact {true_ppl:.3f}  unigram {source.unigram_perplexity():.3f}"
    )
    assert result["perplexity"] <= 1.05 * true_ppl
    assert result["perplexity"] <= 1.04 * oracle_ppl
    assert result["perplexity"] >= 0.97 * oracle_ppl  # cannot beat the truth beyond noise
    assert result["perplexity"] < 0.7 * source.unigram_perplexity()
    assert np.isfinite(result["nll_per_token"])
