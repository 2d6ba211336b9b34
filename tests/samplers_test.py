"""Generation: incremental decoding, the samplers, XLA, the ``generate`` CLI."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_rnnlm.cli import main
from keras_rnnlm.data.vocabulary import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.samplers import (
    BeamSampler,
    GreedySampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
    decode_step,
    generate,
    generate_text,
    get_sampler,
    pad_prompts,
    prefill,
)

V = 40
PROMPTS = [[2, 5, 9, 4, 7], [2, 8], [2, 11, 12, 13]]
CONFIGS = [
    dict(cell="lstm"),
    dict(cell="gru"),
    dict(cell="simple_rnn", num_layers=1),
    dict(cell="lstm", num_layers=3, residual=True, tie_embeddings=True),
    dict(cell="gru", num_layers=2, reset_after=False),
    dict(cell="lstm", use_builtin_layers=True),
    dict(cell="gru", use_builtin_layers=True),
]


def _model(sharpen=4.0, embedding_scale=1.0, **kwargs):
    """A tiny random LM; ``sharpen`` (output layer) and ``embedding_scale`` peak its outputs."""
    if "reset_after" in kwargs:
        kwargs["cell_kwargs"] = {"reset_after": kwargs.pop("reset_after")}
    kwargs = {"units": 8, "embedding_dim": 8, **kwargs}
    model = RNNLanguageModel(V, **kwargs)
    model.build((None, None))
    model.embedding.embeddings.assign(model.embedding.embeddings * embedding_scale)
    if not model.tie_embeddings:
        model.output_layer.kernel.assign(model.output_layer.kernel * sharpen)
    return model


def _bigram_model(table):
    """A LM whose next-token distribution is ``table[previous token]``, exactly.

    One SimpleRNN layer with one-hot embeddings, identity kernel and no recurrence:
    ``h = tanh(1) * onehot(prev)``; the output kernel holds ``log table / tanh(1)``.
    """
    size = table.shape[0]
    model = RNNLanguageModel(size, cell="simple_rnn", num_layers=1, units=size, embedding_dim=size)
    model.build((None, None))
    cell = model.rnn.rnn_layers[0].cell
    eye, zeros = np.eye(size, dtype="float32"), np.zeros((size, size), dtype="float32")
    model.embedding.embeddings.assign(eye)
    cell.kernel.assign(eye)
    cell.recurrent_kernel.assign(zeros)
    cell.bias.assign(np.zeros(size, dtype="float32"))
    log_table = np.log(np.maximum(table, 1e-30)) / np.tanh(1.0)
    model.output_layer.kernel.assign(log_table.astype("float32"))
    model.output_layer.bias.assign(np.zeros(size, dtype="float32"))
    return model


# Ids: 0 <pad>, 1 <unk>, 2 <bos>, 3 <eos>, 4 a, 5 b, 6 c.
A, B, C = 4, 5, 6
BEAM_TABLE = np.full((7, 7), 0.0)
BEAM_TABLE[:, [EOS_ID, A, B, C]] = 0.25  # rows never reached
BEAM_TABLE[BOS_ID, [EOS_ID, A, B, C]] = [0.0, 0.5, 0.4, 0.1]
BEAM_TABLE[A, [EOS_ID, A, B, C]] = [0.3, 0.25, 0.25, 0.2]
BEAM_TABLE[B, [EOS_ID, A, B, C]] = [0.9, 0.05, 0.03, 0.02]
BEAM_TABLE[C, [EOS_ID, A, B, C]] = [1.0, 0.0, 0.0, 0.0]


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _step_distributions(model, prompts, tokens, sampler):
    """For every generated token, the sampler's distribution recomputed by a full forward pass.

    Returns ``(probabilities, emitted)``: ``(n, V)`` and ``(n,)`` over the real generated tokens.
    """
    probabilities, emitted = [], []
    for prompt, row in zip(prompts, tokens, strict=True):
        generated = [int(t) for t in row if t != PAD_ID]
        logits = np.asarray(model(np.array([prompt + generated])))[0]  # (time, V)
        for t, token in enumerate(generated):
            step_logits = tf.constant(logits[len(prompt) - 1 + t][None])
            probabilities.append(np.asarray(sampler.compute_probabilities(step_logits))[0])
            emitted.append(token)
    return np.array(probabilities), np.array(emitted)


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_incremental_decoding_matches_full_forward_pass(config):
    model = _model(**config)
    prompts = pad_prompts(PROMPTS)
    logits, states = prefill(model, prompts)
    sequences = [list(p) for p in PROMPTS]
    rng = np.random.default_rng(0)
    for _ in range(4):
        full = np.asarray(model(pad_prompts(sequences)))  # (batch, time, V)
        last = np.array([full[i, len(s) - 1] for i, s in enumerate(sequences)])
        np.testing.assert_allclose(np.asarray(logits), last, atol=1e-5)
        tokens = rng.integers(4, V, size=len(sequences)).astype("int32")
        for s, token in zip(sequences, tokens, strict=True):
            s.append(int(token))
        logits, states = decode_step(model, tokens, states)


def test_decode_step_equals_forward_with_initial_state():
    model = _model(cell="lstm", num_layers=2)
    _, states = prefill(model, pad_prompts(PROMPTS))
    tokens = np.array([5, 6, 7], dtype="int32")
    logits, new_states = decode_step(model, tokens, states)
    reference, reference_states = model.forward(tokens[:, None], initial_state=states)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(reference)[:, 0], atol=1e-6)
    for ours, theirs in zip(
        tf.nest.flatten(new_states), tf.nest.flatten(reference_states), strict=True
    ):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS[:4] + CONFIGS[5:6], ids=str)
def test_greedy_equals_beam_search_of_width_one(config):
    model = _model(**config)
    greedy = generate(model, PROMPTS, GreedySampler(), max_new_tokens=12)
    beam = generate(model, PROMPTS, BeamSampler(num_beams=1), max_new_tokens=12)
    np.testing.assert_array_equal(greedy, beam)


def test_greedy_follows_the_argmax_of_the_full_forward_pass():
    model = _model()
    tokens = generate(model, PROMPTS, "greedy", max_new_tokens=10)
    sampler = GreedySampler()
    probabilities, emitted = _step_distributions(model, PROMPTS, tokens, sampler)
    np.testing.assert_array_equal(emitted, probabilities.argmax(axis=-1))


def test_batched_prompts_of_different_lengths_equal_one_by_one():
    model = _model(cell="gru")
    batched = generate(model, PROMPTS, "greedy", max_new_tokens=8)
    for prompt, row in zip(PROMPTS, batched, strict=True):
        np.testing.assert_array_equal(generate(model, [prompt], "greedy", max_new_tokens=8)[0], row)


def test_beam_search_returns_the_hand_computed_sequence():
    # Greedy: a (0.5) then <eos> (0.3): P = 0.15.
    # Beam 2, step 1 keeps a (0.5), b (0.4); step 2 candidates: b <eos> 0.36, a <eos> 0.15,
    # a a 0.125, ... -> both kept beams are finished: b <eos> (P = 0.36) wins.
    model = _bigram_model(BEAM_TABLE)
    greedy = generate(model, [[BOS_ID]], GreedySampler(), max_new_tokens=5)
    np.testing.assert_array_equal(greedy[0], [A, EOS_ID, 0, 0, 0])
    for width in (2, 3):
        sampler = BeamSampler(num_beams=width, return_all_beams=True)
        sequences, scores = generate(model, [[BOS_ID]], sampler, max_new_tokens=5)
        np.testing.assert_array_equal(sequences[0, 0], [B, EOS_ID, 0, 0, 0])
        np.testing.assert_array_equal(sequences[0, 1], [A, EOS_ID, 0, 0, 0])
        np.testing.assert_allclose(scores[0, :2], np.log([0.36, 0.15]), atol=1e-5)
    best = generate(model, [[BOS_ID]], BeamSampler(num_beams=2), max_new_tokens=5)
    np.testing.assert_array_equal(best[0], [B, EOS_ID, 0, 0, 0])


def test_beam_length_penalty_ranks_by_mean_log_probability():
    model = _bigram_model(BEAM_TABLE)
    sampler = BeamSampler(num_beams=3, length_penalty=1.0, return_all_beams=True)
    sequences, scores = generate(model, [[BOS_ID]], sampler, max_new_tokens=5)
    np.testing.assert_array_equal(sequences[0, 0], [B, EOS_ID, 0, 0, 0])
    np.testing.assert_allclose(scores[0, 0], np.log(0.36) / 2, atol=1e-5)
    assert np.all(np.diff(scores[0]) <= 0)


def test_top_k_never_leaves_the_k_best():
    model = _model(sharpen=1.0)
    prompts = PROMPTS * 8
    sampler = TopKSampler(k=3, seed=5)
    tokens = generate(model, prompts, sampler, max_new_tokens=10)
    probabilities, emitted = _step_distributions(model, prompts, tokens, sampler)
    assert len(emitted) > 100
    top3 = np.argsort(-probabilities, axis=-1)[:, :3]
    assert all(token in best for token, best in zip(emitted, top3, strict=True))
    assert len(set(emitted.tolist())) > 3  # it does sample, not always the argmax


def test_top_p_never_leaves_the_nucleus():
    model = _model(sharpen=20.0, embedding_scale=20.0)
    prompts = PROMPTS * 8
    sampler = TopPSampler(p=0.6, seed=5)
    tokens = generate(model, prompts, sampler, max_new_tokens=10)
    probabilities, emitted = _step_distributions(model, prompts, tokens, sampler)
    assert len(emitted) > 100
    for token, probs in zip(emitted, probabilities, strict=True):
        order = np.argsort(-probs)
        mass_before = np.cumsum(probs[order]) - probs[order]
        nucleus = order[mass_before < 0.6 - 1e-6]  # smallest top set with mass >= 0.6
        assert token in nucleus
    assert len(set(emitted.tolist())) > 3


def test_temperature_to_zero_approaches_greedy():
    model = _model(sharpen=50.0, embedding_scale=20.0)
    logits, _ = prefill(model, pad_prompts(PROMPTS))
    peaks = [
        float(np.min(np.max(RandomSampler(temperature=t).compute_probabilities(logits), -1)))
        for t in (1.0, 0.3, 0.1, 0.01, 0.001)
    ]
    assert peaks == sorted(peaks) and peaks[-1] > 0.99
    greedy = generate(model, PROMPTS * 4, "greedy", max_new_tokens=10)
    cold = generate(model, PROMPTS * 4, RandomSampler(temperature=1e-4, seed=0), max_new_tokens=10)
    np.testing.assert_array_equal(cold, greedy)


# chi-square critical values at the 0.001 level (degrees of freedom 1..3), for no scipy
_CHI2_CRITICAL_0001 = {1: 10.828, 2: 13.816, 3: 16.266}


@pytest.mark.parametrize(
    "sampler, expected",
    [
        (RandomSampler(seed=11), [0.1, 0.2, 0.3, 0.4]),
        (RandomSampler(temperature=2.0, seed=12), np.sqrt([0.1, 0.2, 0.3, 0.4])),
        (TopKSampler(k=2, seed=13), [0.0, 0.0, 0.3, 0.4]),
        (TopPSampler(p=0.65, seed=14), [0.0, 0.0, 0.3, 0.4]),
    ],
    ids=["sample", "temperature_2", "top_k_2", "top_p_0.65"],
)
def test_sampling_frequencies_match_the_known_distribution(sampler, expected):
    table = np.full((7, 7), 0.25)
    table[:, [PAD_ID, UNK_ID, BOS_ID]] = 0.0
    table[:, [EOS_ID, A, B, C]] = [0.1, 0.2, 0.3, 0.4]
    model = _bigram_model(table)
    n = 4000
    tokens = generate(model, [[BOS_ID]] * n, sampler, max_new_tokens=1)[:, 0]
    counts = np.array([(tokens == i).sum() for i in (EOS_ID, A, B, C)])
    expected = np.asarray(expected) / np.sum(expected)
    assert counts.sum() == n
    assert np.all(counts[expected == 0] == 0)
    observed, expected = counts[expected > 0], n * expected[expected > 0]
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    try:
        from scipy import stats

        assert stats.chisquare(observed, expected).pvalue > 0.001
    except ImportError:
        assert statistic < _CHI2_CRITICAL_0001[len(observed) - 1]


def test_same_seed_same_samples():
    model = _model(sharpen=1.0)
    for cls, kwargs in ((RandomSampler, {}), (TopKSampler, {"k": 5}), (TopPSampler, {"p": 0.9})):
        first = generate(model, PROMPTS, cls(seed=7, **kwargs), max_new_tokens=10)
        again = generate(model, PROMPTS, cls(seed=7, **kwargs), max_new_tokens=10)
        other = generate(model, PROMPTS, cls(seed=8, **kwargs), max_new_tokens=10)
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)


def test_never_emits_padding_or_unk_unless_asked():
    model = _model(sharpen=1.0)
    bias = np.zeros(V, dtype="float32")
    bias[[PAD_ID, UNK_ID, BOS_ID]] = 3.0  # the model loves them
    model.output_layer.bias.assign(bias)
    prompts = PROMPTS * 4
    tokens = generate(model, prompts, RandomSampler(seed=1), max_new_tokens=10)
    for row in tokens:
        real = row[: np.argmax(row == PAD_ID)] if (row == PAD_ID).any() else row
        assert not np.isin(real, [PAD_ID, UNK_ID, BOS_ID]).any()
    allowed = RandomSampler(seed=1, suppressed_token_ids=(PAD_ID, BOS_ID))
    assert (generate(model, prompts, allowed, max_new_tokens=10) == UNK_ID).any()


def test_rows_stop_at_eos_and_max_length():
    model = _model()
    bias = np.zeros(V, dtype="float32")
    bias[EOS_ID] = 2.0
    model.output_layer.bias.assign(bias)
    tokens = generate(model, PROMPTS * 4, RandomSampler(seed=3), max_new_tokens=9)
    assert tokens.shape == (12, 9)
    stopped = 0
    for row in tokens:
        if (row == EOS_ID).any():
            stopped += 1
            assert np.all(row[np.argmax(row == EOS_ID) + 1 :] == PAD_ID)
        else:
            assert np.all(row != PAD_ID)
    assert stopped > 0
    never = generate(model, PROMPTS, "greedy", max_new_tokens=9, end_token_id=None)
    assert np.all(never != PAD_ID)


@pytest.mark.parametrize(
    "sampler",
    [GreedySampler(), TopPSampler(p=0.8, seed=0), BeamSampler(num_beams=3)],
    ids=["greedy", "top_p", "beam"],
)
def test_generation_compiles_with_xla(sampler):
    model = _model(cell="lstm", num_layers=2)
    compiled = generate(model, PROMPTS, sampler, max_new_tokens=8, jit_compile=True)
    assert compiled.shape == (3, 8)
    assert not np.isin(compiled[:, 0], [PAD_ID, UNK_ID, BOS_ID]).any()
    # the explicit draw (Philox integers, inverse CDF) is the same under XLA and on the CPU kernel
    np.testing.assert_array_equal(compiled, generate(model, PROMPTS, sampler, max_new_tokens=8))


def test_get_sampler_and_config_round_trip():
    assert isinstance(get_sampler("greedy"), GreedySampler)
    sampler = get_sampler("top_p", p=0.7, seed=3, temperature=0.5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(sampler))
    assert isinstance(restored, TopPSampler) and restored.get_config() == sampler.get_config()
    with pytest.raises(ValueError, match="Unknown sampler"):
        get_sampler("nucleus")
    with pytest.raises(ValueError):
        Sampler(temperature=0.0)


def _run_dir(tmp_path):
    vocabulary = Vocabulary.build(["the students opened their books", "the cat sat"])
    model = RNNLanguageModel(vocabulary.size, units=8, embedding_dim=8, num_layers=1)
    model.build((None, None))
    out = tmp_path / "run"
    out.mkdir()
    model.save(out / "model.keras")
    vocabulary.save(out / "vocabulary.json")
    return out, vocabulary, model


def test_generate_text_beam_returns_the_best_beams(tmp_path):
    _, vocabulary, model = _run_dir(tmp_path)
    (samples,) = generate_text(model, vocabulary, ["the cat"], BeamSampler(num_beams=3), 5, 2)
    assert len(samples) == 2 and all(isinstance(s, str) for s in samples)
    with pytest.raises(ValueError, match="beam width"):
        generate_text(model, vocabulary, ["the"], BeamSampler(num_beams=2), 5, num_samples=3)


@pytest.mark.parametrize("strategy", ["greedy", "sample", "top_k", "top_p", "beam"])
def test_cli_generate(tmp_path, capsys, strategy):
    run, _, _ = _run_dir(tmp_path)
    args = ["generate", str(run), "--prompt", "the students opened their", "--strategy"]
    args += [strategy, "--max-length", "11", "--num-samples", "2", "--seed", "4"]  # 5 + 6 new
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("the students opened their") for line in lines)
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines() == lines  # same seed, same samples
