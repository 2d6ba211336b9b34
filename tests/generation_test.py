"""One generation engine: the explicit draw, tensor-valued settings, cached ``generate_with_model``."""

import numpy as np
import pytest
import tensorflow as tf
from log_capture import tensorflow_warnings

from keras_rnnlm.data.vocabulary import EOS_ID, PAD_ID, Vocabulary
from keras_rnnlm.evaluation import trace_count
from keras_rnnlm.models import RNNLanguageModel
from keras_rnnlm.run_config import MODEL_FILE, VOCAB_FILE
from keras_rnnlm.samplers import (
    BeamSampler,
    GreedySampler,
    RandomSampler,
    TopKSampler,
    TopPSampler,
    decode_step,
    draw,
    generate,
    generate_text,
    generate_with_model,
    pad_prompts,
    prefill,
    stateless_uniform,
)

PROMPTS = [[2, 5, 9, 4, 7], [2, 8], [2, 11, 12, 13]]


def _model(vocabulary_size=30):
    model = RNNLanguageModel(vocabulary_size, units=8, embedding_dim=8)
    model.build((None, None))
    return model


def test_uniforms_are_the_same_in_eager_graph_and_xla():
    graph = tf.function(stateless_uniform)
    xla = tf.function(stateless_uniform, jit_compile=True)
    for s in range(8):
        seed = tf.constant([s, 3 * s + 1])
        eager = stateless_uniform(seed, 64).numpy()
        np.testing.assert_array_equal(graph(seed, 64).numpy(), eager)
        np.testing.assert_array_equal(xla(seed, 64).numpy(), eager)
        assert 0.0 < eager.min() and eager.max() < 1.0
        assert abs(eager.mean() - 0.5) < 0.15


def test_draw_is_the_inverse_cdf_of_the_uniform():
    weights = tf.constant([[0.0, 1.0, 0.0, 3.0], [2.0, 0.0, 2.0, 0.0]])
    seed = tf.constant([4, 2])
    u = stateless_uniform(seed, 2).numpy()
    expected = [1 if u[0] < 0.25 else 3, 0 if u[1] < 0.5 else 2]
    assert draw(weights, seed).numpy().tolist() == expected
    many = np.array([draw(weights, tf.constant([0, i])).numpy() for i in range(400)])
    assert set(many[:, 0]) == {1, 3} and set(many[:, 1]) == {0, 2}  # zero weights never drawn
    assert 0.15 < np.mean(many[:, 0] == 1) < 0.35


@pytest.mark.parametrize(
    "sampler",
    [RandomSampler(temperature=0.8, seed=3), TopKSampler(k=5, temperature=0.8, seed=4)],
    ids=["temperature_0.8", "top_k_5"],
)
def test_same_tokens_in_eager_graph_and_xla(sampler):
    model = _model()
    prompts = pad_prompts(PROMPTS * 3)
    seed = sampler.resolve_seed()

    def run(prompt_ids, seed):
        logits, states = prefill(model, prompt_ids)
        return sampler(lambda t, s: decode_step(model, t, s), logits, states, 12, None, seed)

    eager = run(tf.constant(prompts), seed).numpy()
    graph = tf.function(run)(tf.constant(prompts), seed).numpy()
    xla = tf.function(run, jit_compile=True)(tf.constant(prompts), seed).numpy()
    np.testing.assert_array_equal(graph, eager)
    np.testing.assert_array_equal(xla, eager)
    assert len(set(eager.ravel().tolist())) > 3  # it samples


def test_tensor_valued_settings_give_the_python_valued_tokens():
    model = _model()
    prompts = tf.constant(pad_prompts(PROMPTS * 3))
    seed = tf.constant([9, 0])
    python_valued = [
        TopKSampler(k=5, temperature=0.8, seed=9),
        TopPSampler(p=0.7, temperature=1.3, seed=9),
        RandomSampler(temperature=0.5, seed=9),
    ]

    @tf.function(jit_compile=True)
    def tensor_valued(prompt_ids, k, p, temperature, max_new_tokens, seed):
        samplers = [
            TopKSampler(k=k, temperature=temperature[0]),
            TopPSampler(p=p, temperature=temperature[1]),
            RandomSampler(temperature=temperature[2]),
        ]
        logits, states = prefill(model, prompt_ids)
        step = lambda t, s: decode_step(model, t, s)  # noqa: E731
        return [
            s(step, logits, states, max_new_tokens, None, seed, buffer_length=16) for s in samplers
        ]

    got = tensor_valued(
        prompts,
        tf.constant(5),
        tf.constant(0.7),
        tf.constant([0.8, 1.3, 0.5]),
        tf.constant(10),
        seed,
    )
    for sampler, tokens in zip(python_valued, got, strict=True):
        assert tokens.shape == (9, 10)
        want = generate(model, prompts.numpy(), sampler, max_new_tokens=10, end_token_id=None)
        np.testing.assert_array_equal(tokens.numpy(), want)


def test_generate_with_model_counts_the_prompt_in_max_length_and_does_not_retrace():
    model = _model()
    out = generate_with_model(model, PROMPTS, max_length=9, sampler="top_k", k=4, seed=1)
    assert out.shape == (3, 9)
    for prompt, row in zip(PROMPTS, out, strict=True):
        assert row[: len(prompt)].tolist() == prompt
        assert (row[len(prompt) :] != PAD_ID).any() or EOS_ID in row
    again = generate_with_model(model, PROMPTS, max_length=9, sampler="top_k", k=4, seed=1)
    np.testing.assert_array_equal(again, out)
    traced = trace_count(model, "generate")
    assert traced == 1
    generate_with_model(model, PROMPTS, max_length=9, sampler="top_k", k=4, seed=2)  # new seed
    generate(model, PROMPTS, TopKSampler(k=4, seed=5), max_new_tokens=9 - 2)  # same settings
    assert trace_count(model, "generate") == 1
    generate_with_model(model, PROMPTS, max_length=9, sampler="top_k", k=3, seed=1)
    assert trace_count(model, "generate") == 2  # other settings: one more function


def test_generate_with_model_strings_in_strings_out():
    vocabulary = Vocabulary.build(["the cat sat on the mat", "a dog ran"])
    model = _model(vocabulary.size)
    greedy = generate_with_model(model, "the cat", max_length=6, vocabulary=vocabulary)
    assert isinstance(greedy, str) and greedy.startswith("the cat")
    prompt = [vocabulary.start_id, *vocabulary.encode("the cat")]
    ids = generate_with_model(model, [prompt], max_length=6)[0]
    assert greedy == vocabulary.decode(ids)
    texts = generate_with_model(
        model, ["the cat", "a dog"], 6, GreedySampler(), vocabulary=vocabulary
    )
    assert texts[0] == greedy and texts[1].startswith("a dog")
    with pytest.raises(ValueError, match="no room"):
        generate_with_model(model, "the cat sat", max_length=3, vocabulary=vocabulary)
    with pytest.raises(ValueError, match="need a vocabulary"):
        generate_with_model(model, "the cat")


def test_six_sampler_settings_trace_six_functions_without_a_retracing_warning():
    model = _model()
    samplers = [
        GreedySampler(),
        BeamSampler(num_beams=3),
        RandomSampler(temperature=1.0, seed=1),
        RandomSampler(temperature=0.7, seed=1),
        TopKSampler(k=5, seed=1),
        TopPSampler(p=0.9, seed=1),
    ]
    with tensorflow_warnings() as messages:
        for sampler in samplers:
            generate(model, PROMPTS, sampler, max_new_tokens=4)
        for sampler in samplers:  # cached: no new trace
            generate(model, PROMPTS, sampler, max_new_tokens=4)
    assert trace_count(model, "generate") == len(samplers)  # one function each, traced once
    assert not [m for m in messages if "retracing" in m], messages


def _run_dir(tmp_path):
    """A run directory the CLI reads (``model.keras`` + ``vocabulary.json``), untrained."""
    tf.keras.utils.set_random_seed(4)
    vocabulary = Vocabulary.build(
        ["the cat sat on the mat", "a dog ran to the big red house", "one two three four five"]
    )
    model = _model(vocabulary.size)
    bias = model.output_layer.bias
    bias.assign(tf.tensor_scatter_nd_update(bias, [[EOS_ID]], [-30.0]))  # rows run full length
    model.save(tmp_path / MODEL_FILE)
    vocabulary.save(tmp_path / VOCAB_FILE)
    return model, vocabulary


def test_max_length_means_the_total_in_the_cli_the_model_and_the_library(tmp_path, capsys):
    from keras_rnnlm.cli import main

    model, vocabulary = _run_dir(tmp_path)
    prompt, total, seed = "the cat", 10, 3
    prompt_ids = [vocabulary.start_id, *vocabulary.encode(prompt)]
    new = total - len(prompt_ids)  # keras-hub: the prompt, start token included, is counted

    ids = model.generate([prompt_ids], max_length=total, sampler="top_k", k=5, seed=seed)[0]
    assert ids.shape == (total,) and ids[: len(prompt_ids)].tolist() == prompt_ids
    assert EOS_ID not in ids and PAD_ID not in ids  # <eos> made unlikely: the full length
    library = generate(model, [prompt_ids], TopKSampler(k=5, seed=seed), max_new_tokens=new)
    assert library[0].tolist() == ids[len(prompt_ids) :].tolist()

    text = model.generate(
        prompt, max_length=total, sampler="top_k", k=5, seed=seed, vocabulary=vocabulary
    )
    assert text == vocabulary.decode(ids[1:])
    (continuations,) = generate_text(
        model, vocabulary, [prompt], TopKSampler(k=5, seed=seed), max_new_tokens=new
    )
    assert f"{prompt} {continuations[0]}" == text
    cli = ["generate", str(tmp_path), "--prompt", prompt, "--strategy", "top_k"]
    cli += ["--top-k", "5", "--seed", str(seed)]
    assert main([*cli, "--max-length", str(total)]) == 0
    assert capsys.readouterr().out.strip() == text
    assert main([*cli, "--max-new-tokens", str(new)]) == 0
    assert capsys.readouterr().out.strip() == text
    with pytest.raises(SystemExit):  # one of the two lengths, not both
        main([*cli, "--max-length", str(total), "--max-new-tokens", str(new)])
    assert "not allowed with argument" in capsys.readouterr().err


def test_max_length_keyword_of_the_new_token_functions_is_deprecated():
    from keras_rnnlm.deploy.host import KerasStep, generate_with_step

    model = _model()
    want = generate(model, PROMPTS, "greedy", max_new_tokens=5)
    assert want.shape == (3, 5)
    with pytest.warns(DeprecationWarning, match=r"max_new_tokens=5 for the same result"):
        old = generate(model, PROMPTS, "greedy", max_length=5)
    np.testing.assert_array_equal(old, want)
    with pytest.warns(DeprecationWarning, match=r"generate_with_step\(max_length=\.\.\.\)"):
        stepped = generate_with_step(KerasStep(model), PROMPTS, "greedy", max_length=5)
    np.testing.assert_array_equal(stepped, want)
    logits, states = prefill(model, pad_prompts(PROMPTS))
    step = lambda t, s: decode_step(model, t, s)  # noqa: E731
    with pytest.warns(DeprecationWarning, match="GreedySampler"):
        looped = GreedySampler()(step, logits, states, max_length=5)
    np.testing.assert_array_equal(looped.numpy(), want)
    with pytest.raises(TypeError, match="max_new_tokens only"):
        generate(model, PROMPTS, "greedy", max_new_tokens=5, max_length=5)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(model, PROMPTS, "greedy", max_new_tokens=0)
