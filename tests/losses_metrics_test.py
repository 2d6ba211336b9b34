"""The masked loss and the streaming Perplexity metric against hand computations."""

import math

import keras
import numpy as np
import pytest

from keras_rnnlm.losses import MaskedLanguageModelLoss
from keras_rnnlm.metrics import BitsPerCharacter, Perplexity

RNG = np.random.default_rng(0)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _hand_nll(targets, logits):
    lp = _log_softmax(logits.astype(np.float64))
    return [
        -lp[b, t, targets[b, t]]
        for b in range(targets.shape[0])
        for t in range(targets.shape[1])
        if targets[b, t] != 0
    ]


def test_loss_is_mean_over_real_tokens_only():
    targets = np.array([[3, 4, 0, 0], [5, 0, 0, 0]])
    logits = RNG.normal(size=(2, 4, 6)).astype("float32")
    expected = np.mean(_hand_nll(targets, logits))
    assert abs(float(MaskedLanguageModelLoss()(targets, logits)) - expected) < 1e-5
    # changing logits at padded positions changes nothing
    logits2 = logits.copy()
    logits2[targets == 0] = 100.0
    assert abs(float(MaskedLanguageModelLoss()(targets, logits2)) - expected) < 1e-5


def test_perplexity_over_unequal_batches_is_exp_of_total_nll_over_total_tokens():
    batches = []
    for batch, time in [(3, 7), (1, 2), (5, 4)]:
        targets = RNG.integers(1, 6, size=(batch, time))
        lengths = RNG.integers(1, time + 1, size=batch)
        targets[np.arange(time)[None, :] >= lengths[:, None]] = 0
        batches.append((targets, RNG.normal(size=(batch, time, 6)).astype("float32")))
    metric, bpc = Perplexity(), BitsPerCharacter()
    all_nll = []
    for targets, logits in batches:
        metric.update_state(targets, logits)
        bpc.update_state(targets, logits)
        all_nll += _hand_nll(targets, logits)
    exact = math.exp(np.mean(all_nll))
    assert abs(float(metric.result()) - exact) < 1e-4 * exact
    assert abs(float(bpc.result()) - np.mean(all_nll) / math.log(2)) < 1e-5
    assert int(metric.total_tokens) == len(all_nll)
    # a mean of per-batch perplexities would differ: the metric is not that
    per_batch = np.mean([math.exp(np.mean(_hand_nll(t, z))) for t, z in batches])
    assert abs(per_batch - exact) > 1e-3
    metric.reset_state()
    assert float(metric.total_tokens) == 0.0


def test_metric_and_loss_serialize():
    # non-default arguments, so that a lost jit_compile or name would fail
    for obj in (
        Perplexity(name="ppl", jit_compile=True),
        BitsPerCharacter(jit_compile=True),
        MaskedLanguageModelLoss(name="lm", jit_compile=True),
    ):
        clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert type(clone) is type(obj)
        assert clone.get_config() == obj.get_config()
        assert clone.jit_compile is True and clone.name == obj.name


def test_xla_cross_entropy_paths_match_hand_computation():
    # the hybrid step's XLA cross-entropy: the loss (NLL + gradient softmax - one_hot in one
    # pass) and the metric (NLL only) against numpy
    import tensorflow as tf

    from keras_rnnlm.losses import sparse_softmax_cross_entropy

    targets = np.array([[3, 4, 0, 1], [5, 2, 0, 0]])
    logits = tf.constant(RNG.normal(size=(2, 4, 6)).astype("float32") * 3)
    expected = -np.take_along_axis(
        _log_softmax(logits.numpy().astype(np.float64)), targets[..., None], -1
    )[..., 0]
    with tf.GradientTape() as tape:
        tape.watch(logits)
        nll = sparse_softmax_cross_entropy(targets, logits, jit_compile=True)
        total = tf.reduce_sum(nll * np.arange(8).reshape(2, 4))
    np.testing.assert_allclose(nll, expected, rtol=1e-5, atol=1e-6)
    nll_only = sparse_softmax_cross_entropy(targets, logits, jit_compile=True, differentiable=False)
    np.testing.assert_allclose(nll_only, expected, rtol=1e-5, atol=1e-6)
    probabilities = np.exp(-_hand_nll_all(logits.numpy()))
    one_hot = np.eye(6)[targets]
    expected_grad = (probabilities - one_hot) * np.arange(8).reshape(2, 4, 1)
    np.testing.assert_allclose(tape.gradient(total, logits), expected_grad, atol=1e-5)
    metric = Perplexity(jit_compile=True)
    metric.update_state(targets, logits)
    exact = math.exp(np.mean(_hand_nll(targets, logits.numpy())))
    assert float(metric.result()) == pytest.approx(exact, rel=1e-5)


def _hand_nll_all(logits):
    return -_log_softmax(logits.astype(np.float64))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_output_layer_cross_entropy_equals_loss_of_logits(dtype):
    # output_layer_cross_entropy (hybrid train step) against MaskedLanguageModelLoss on the
    # logits of the same matmul, differentiated by TensorFlow: value, gradients, NLL sum, count
    import tensorflow as tf

    from keras_rnnlm.fast.output_layer import output_layer_cross_entropy

    hidden = tf.constant(RNG.normal(size=(10, 6)), tf.float32)
    kernel = tf.constant(RNG.normal(size=(6, 9)), tf.float32)
    bias = tf.constant(RNG.normal(size=(9,)), tf.float32)
    targets = np.array([3, 0, 8, 1, 0, 0, 2, 5, 5, 7])

    def reference(h, k, b):
        product = tf.matmul(tf.cast(h, dtype), tf.cast(k, dtype))
        logits = tf.cast(product, tf.float32) + b
        return MaskedLanguageModelLoss()(targets, logits), logits

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([hidden, kernel, bias])
        loss, nll_sum, count = output_layer_cross_entropy(hidden, kernel, bias, targets, dtype)
        expected, logits = reference(hidden, kernel, bias)
    assert float(count) == 7.0
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    np.testing.assert_allclose(
        float(nll_sum), np.sum(_hand_nll(targets[None], logits.numpy()[None])), rtol=1e-5
    )
    ours = tape.gradient(loss, [hidden, kernel, bias])
    theirs = tape.gradient(expected, [hidden, kernel, bias])
    tolerance = 1e-6 if dtype == "float32" else 1e-2  # bf16: the gradient is rounded once more
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


def test_fused_output_layer_cross_entropy_of_padding_only_is_zero():
    import tensorflow as tf

    from keras_rnnlm.fast.output_layer import output_layer_cross_entropy

    hidden = tf.ones((3, 2))
    with tf.GradientTape() as tape:
        tape.watch(hidden)
        loss, nll_sum, count = output_layer_cross_entropy(
            hidden, tf.ones((2, 4)), tf.zeros(4), np.zeros(3, "int32")
        )
    assert (float(loss), float(nll_sum), float(count)) == (0.0, 0.0, 0.0)
    assert not np.any(tape.gradient(loss, hidden))


def test_perplexity_update_from_totals_equals_update_state():
    targets = np.array([[3, 4, 0], [5, 1, 2]])
    logits = RNG.normal(size=(2, 3, 6)).astype("float32")
    nll = _hand_nll(targets, logits)
    a, b = Perplexity(), Perplexity()
    a.update_state(targets, logits)
    b.update_from_totals(np.sum(nll), len(nll))
    assert float(a.result()) == pytest.approx(float(b.result()), rel=1e-6)


def _batch_totals(num_batches=1000, tokens_per_batch=1000):
    """Per-batch float32 NLL sums and token counts of ~1e6 tokens (mean NLL about 4.6)."""
    rng = np.random.default_rng(1)
    counts = rng.integers(tokens_per_batch // 2, tokens_per_batch + 1, num_batches)
    nll = (counts * rng.uniform(3.0, 6.0, num_batches)).astype(np.float32)
    return nll, counts.astype(np.float32)


def test_perplexity_keeps_float32_pairs_only():
    metric = BitsPerCharacter()
    assert {v.dtype for v in metric.variables} == {"float32"}
    assert len(metric.variables) == 4  # (hi, lo) for the NLL and for the token count


def test_perplexity_totals_without_float64_match_a_float64_reference_over_1e6_tokens():
    nll, counts = _batch_totals()
    reference_nll = np.sum(nll.astype(np.float64))  # the same float32 batch sums, in float64
    reference_tokens = int(np.sum(counts.astype(np.int64)))
    assert reference_tokens > 700_000
    metric = Perplexity()
    for batch_nll, batch_count in zip(nll, counts):
        metric.update_from_totals(batch_nll, batch_count)
    # the compensated pair: within a few float32 ulps of the float64 total (2**-24 ~ 6e-8)
    assert abs(float(metric.total_nll) - reference_nll) <= 4 * 2.0**-24 * reference_nll
    assert int(metric.total_tokens) == reference_tokens  # counts exact past 2**24
    exact = math.exp(reference_nll / reference_tokens)
    assert abs(float(metric.result()) - exact) <= 1e-6 * exact
    # a plain float32 running sum (what the pair replaces) is far outside that bound
    naive = np.float32(0.0)
    for batch_nll in nll:
        naive = np.float32(naive + batch_nll)
    assert abs(float(naive) - reference_nll) > 4 * 4 * 2.0**-24 * reference_nll
    naive_perplexity = math.exp(float(naive) / reference_tokens)
    assert abs(naive_perplexity - exact) > 1e-6 * exact


def test_compensated_counts_stay_exact_beyond_float32_integers():
    metric = Perplexity()
    metric.update_from_totals(0.0, 2.0**24)
    for _ in range(3):
        metric.update_from_totals(1.0, 1.0)  # float32 alone: 2**24 + 1 == 2**24
    assert int(metric.total_tokens) == 2**24 + 3
    assert float(metric.total_nll) == 3.0


def test_perplexity_update_compiles_with_xla_and_matches_eager():
    import tensorflow as tf

    nll, counts = _batch_totals(200, 1000)
    eager, compiled = Perplexity(), Perplexity()
    update = tf.function(compiled.update_from_totals, jit_compile=True)
    for batch_nll, batch_count in zip(nll, counts):
        eager.update_from_totals(batch_nll, batch_count)
        update(tf.constant(batch_nll), tf.constant(batch_count))
    # XLA keeps the TwoSum arithmetic (no reassociation): bit-identical pairs
    assert float(compiled.total_nll) == float(eager.total_nll)
    assert int(compiled.total_tokens) == int(eager.total_tokens)
