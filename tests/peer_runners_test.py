"""benchmarks/peer_runners.py: the two-process protocol against PyTorch (tiny shapes, no timings).

PyTorch is not a dependency: the tests that need it skip when it is not importable.
"""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
HAVE_TORCH = importlib.util.find_spec("torch") is not None
NO_TORCH = "torch is not importable (not a dependency; pip install torch==2.13.0)"
UNITS, LAYERS, VOCAB = 8, 2, 37
ROUNDS = 2


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("peer_runners", BENCHMARKS / "peer_runners.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sentence_batches():
    """Three padded batches of different shapes, as the bucketed pipeline gives."""
    rng = np.random.default_rng(1)
    batches = []
    for rows, length in ((3, 4), (2, 7), (3, 5)):
        x = rng.integers(4, VOCAB, size=(rows, length)).astype("int32")
        y = rng.integers(4, VOCAB, size=(rows, length)).astype("int32")
        for row in range(rows):  # right padding with id 0 in both inputs and targets
            cut = int(rng.integers(2, length + 1))
            x[row, cut:] = 0
            y[row, cut:] = 0
        batches.append((x, y))
    return batches


@pytest.fixture(scope="module")
def workloads(peers):
    return {
        "ptb": (VOCAB, peers.random_stream(3, VOCAB, batch_size=4, num_steps=5, seed=3)),
        "sentences": (VOCAB, _sentence_batches()),
    }


@pytest.fixture(scope="module")
def results(peers, workloads, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("peers")
    path = workdir / "given_batches.npz"
    peers.save_batches(path, workloads)
    runners = {
        "ptb ours fp32 numpy": peers.RUNNERS["ptb ours fp32 numpy"],
        "ptb ours fp32 tf.data": peers.RUNNERS["ptb ours fp32 tf.data"],
        "sentences ours fp32": peers.RUNNERS["sentences ours fp32"],
    }
    if HAVE_TORCH:
        for name in ("ptb torch fp32", "ptb torch autocast-bf16", "sentences torch fp32"):
            runners[name] = peers.RUNNERS[name]
    lines = []
    out = peers.run_peers(
        workdir, runners, rounds=ROUNDS, pause=0.0, units=UNITS, layers=LAYERS,
        batches_path=path, log=lines.append,
    )  # fmt: skip
    return out, runners, lines


def test_batches_file_round_trip_and_checksum(peers, workloads, tmp_path):
    peers.save_batches(tmp_path / "b.npz", workloads)
    loaded = peers.load_batches(tmp_path / "b.npz")
    assert sorted(loaded) == ["ptb", "sentences"]
    for name, (vocabulary_size, batches) in workloads.items():
        assert loaded[name][0] == vocabulary_size
        assert len(loaded[name][1]) == len(batches)
        for (x, y), (x2, y2) in zip(batches, loaded[name][1], strict=True):
            np.testing.assert_array_equal(x, x2)
            np.testing.assert_array_equal(y, y2)
        assert peers.batches_checksum(loaded[name][1]) == peers.batches_checksum(batches)
    changed = [(x.copy(), y.copy()) for x, y in workloads["ptb"][1]]
    changed[2][1][0, 0] += 1  # one target id
    assert peers.batches_checksum(changed) != peers.batches_checksum(workloads["ptb"][1])
    swapped = [workloads["ptb"][1][1], workloads["ptb"][1][0], workloads["ptb"][1][2]]
    assert peers.batches_checksum(swapped) != peers.batches_checksum(workloads["ptb"][1])


def test_random_stream_is_a_shifted_stream(peers):
    batches = peers.random_stream(2, 50, batch_size=3, num_steps=6, seed=0)
    assert [x.shape for x, _ in batches] == [(3, 6), (3, 6)]
    for x, y in batches:
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
        assert x.min() >= 4 and x.max() < 50
    with pytest.raises(ValueError, match="num_batches"):
        peers.random_stream(0)


def test_coordinator_imports_neither_framework():
    code = (
        f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import peer_runners; "
        "print('tensorflow' in sys.modules, 'torch' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_each_worker_loads_only_its_framework(results):
    out, _, _ = results
    assert out["setup"]["tf"]["imported"] == {"tensorflow": True, "torch": False}
    if not HAVE_TORCH:
        pytest.skip(NO_TORCH)
    assert out["setup"]["torch"]["imported"] == {"tensorflow": False, "torch": True}
    assert out["setup"]["torch"]["pid"] != out["setup"]["tf"]["pid"]


def test_figures_are_well_formed(results, workloads):
    out, runners, lines = results
    assert len(out["rounds"]) == ROUNDS
    assert set(out["speeds"]) == set(runners)
    for record in out["rounds"]:
        assert set(record["figures"]) == set(runners)
        for name, figure in record["figures"].items():
            assert figure["name"] == name
            assert figure["tokens_per_s"] > 0 and math.isfinite(figure["tokens_per_s"])
            assert figure["finished"] >= figure["started"]
            assert math.isfinite(figure["mean_loss"])
            batches = workloads[runners[name][1]["workload"]][1]
            real = sum(int(np.count_nonzero(y)) for _, y in batches)  # padding id 0 excluded
            assert figure["tokens_per_s"] == pytest.approx(real / figure["seconds"])
            assert figure["user_s"] > 0 and figure["system_s"] >= 0  # the worker's CPU time
    for name, speeds in out["speeds"].items():
        assert speeds == [r["figures"][name]["tokens_per_s"] for r in out["rounds"]]
    assert sum(line.startswith("round ") for line in lines) == ROUNDS
    assert any(line.lstrip().startswith("CPU per round") for line in lines)


def test_order_alternates_between_rounds(results):
    out, runners, _ = results
    if not HAVE_TORCH:
        pytest.skip(NO_TORCH)
    assert [r["first"] for r in out["rounds"]] == ["tf", "torch"]
    for record in out["rounds"]:  # the workers' own clocks: first framework done before second
        first, second = record["order"]
        ends = [f["finished"] for n, f in record["figures"].items() if runners[n][0] == first]
        starts = [f["started"] for n, f in record["figures"].items() if runners[n][0] == second]
        assert max(ends) <= min(starts)


def test_both_sides_see_the_same_batches(peers, results, workloads):
    out, runners, _ = results
    for framework, setup in out["setup"].items():
        for name, info in setup["runners"].items():
            workload = runners[name][1]["workload"]
            assert info["checksum"] == peers.batches_checksum(workloads[workload][1]), (
                framework,
                name,
            )
            assert info["steps"] == len(workloads[workload][1])
    if not HAVE_TORCH:
        pytest.skip(NO_TORCH)
    tf_runners, torch_runners = out["setup"]["tf"]["runners"], out["setup"]["torch"]["runners"]
    assert (
        torch_runners["ptb torch fp32"]["checksum"] == tf_runners["ptb ours fp32 numpy"]["checksum"]
    )


def test_torch_model_has_as_many_parameters_as_ours(peers, results):
    out, _, _ = results
    expected = peers.expected_parameter_count(VOCAB, UNITS, LAYERS)
    for info in out["setup"]["tf"]["runners"].values():
        assert info["parameters"] == expected
    if not HAVE_TORCH:
        pytest.skip(NO_TORCH)
    for info in out["setup"]["torch"]["runners"].values():
        assert info["parameters"] == expected
    runners = out["setup"]["torch"]["runners"]
    assert runners["ptb torch autocast-bf16"]["output_matmul_dtype"] == "bfloat16"
    assert runners["ptb torch fp32"]["output_matmul_dtype"] == "float32"


def test_ratios_are_same_round(peers):
    speeds = {"a": [2.0, 3.0, 9.0], "b": [1.0, 3.0, 3.0]}
    assert peers.same_round_ratios(speeds, "a", "b") == [2.0, 1.0, 3.0]
    with pytest.raises(ValueError):
        peers.same_round_ratios({"a": [1.0], "b": [1.0, 2.0]}, "a", "b")


def test_bad_input_is_refused(peers, tmp_path):
    with pytest.raises(ValueError, match="rounds"):
        peers.run_peers(tmp_path, rounds=0)
    with pytest.raises(ValueError, match="framework"):
        peers.WorkerProcess("jax", tmp_path / "log")
    worker = peers.WorkerProcess("tf", tmp_path / "tf.log")  # fails before importing TF
    try:
        with pytest.raises(RuntimeError, match="KeyError"):
            worker.call("run", name="no such runner")
        assert worker.call("imported") == {"tensorflow": False, "torch": False}
    finally:
        worker.close()
    assert worker.process.returncode == 0


def test_bf16_numerics_windows_from_a_running_mean():
    spec = importlib.util.spec_from_file_location("bf16_numerics", BENCHMARKS / "bf16_numerics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = np.random.default_rng(0).normal(5.0, 1.0, size=30)
    running = list(np.cumsum(values) / np.arange(1, 31))  # what Keras logs after each batch
    expected = [values[i : i + 10].mean() for i in (0, 10, 20)]
    np.testing.assert_allclose(module.window_means_from_running_mean(running, 10), expected)
    np.testing.assert_allclose(module.window_means(list(values), 10), expected)
    assert module.window_means(list(values), 7) == pytest.approx(
        [values[i : i + 7].mean() for i in (0, 7, 14, 21)]
    )


def _bf16_numerics():
    spec = importlib.util.spec_from_file_location("bf16_numerics", BENCHMARKS / "bf16_numerics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not HAVE_TORCH, reason=NO_TORCH)
def test_torch_runner_init_ours_biases(peers, workloads):
    vocabulary_size, batches = workloads["ptb"]
    kwargs = dict(units=UNITS, layers=LAYERS, warm_up=False)
    ours = peers.TorchRunner("ptb", vocabulary_size, batches, init="ours", **kwargs).model
    uniform = peers.TorchRunner("ptb", vocabulary_size, batches, **kwargs).model  # the default
    expected = np.zeros(4 * UNITS, np.float32)
    expected[UNITS : 2 * UNITS] = 1.0  # gates i, f, g, o: the forget gate's block at 1
    for layer in range(LAYERS):
        np.testing.assert_array_equal(
            getattr(ours.lstm, f"bias_ih_l{layer}").detach().numpy(), expected
        )
        for model in (ours, uniform):  # the second bias: zero and frozen either way
            bias_hh = getattr(model.lstm, f"bias_hh_l{layer}")
            assert not bias_hh.requires_grad
            np.testing.assert_array_equal(bias_hh.detach().numpy(), 0.0)
        bias = getattr(uniform.lstm, f"bias_ih_l{layer}").detach().numpy()
        assert np.abs(bias).max() <= peers.INIT and np.abs(bias).min() > 0.0
        assert bias.std() > peers.INIT / 4  # uniform in [-0.1, 0.1]: std 0.058
    np.testing.assert_array_equal(ours.output.bias.detach().numpy(), 0.0)
    assert np.abs(uniform.output.bias.detach().numpy()).max() > peers.INIT / 2
    named_ours, named_uniform = dict(ours.named_parameters()), dict(uniform.named_parameters())
    for name, p in named_ours.items():  # the weight matrices: the same draws either way
        if "bias" not in name:
            np.testing.assert_array_equal(p.detach().numpy(), named_uniform[name].detach().numpy())
            assert np.abs(p.detach().numpy()).max() <= peers.INIT
    with pytest.raises(ValueError, match="init"):
        peers.TorchRunner("ptb", vocabulary_size, batches, init="glorot", **kwargs)


@pytest.mark.skipif(not HAVE_TORCH, reason=NO_TORCH)
def test_torch_init_ours_matches_our_model_biases(peers, workloads):
    """The init="ours" biases are those our RNNLanguageModel starts with (independent truth)."""
    import keras

    from keras_rnnlm.models import RNNLanguageModel

    vocabulary_size, batches = workloads["ptb"]
    model = RNNLanguageModel(
        vocabulary_size, num_layers=LAYERS, units=UNITS, embedding_dim=UNITS,
        init_scale=peers.INIT, stateful=True, output_dtype="float32",
    )  # fmt: skip
    model.build((batches[0][0].shape[0], None))
    theirs = peers.TorchRunner(
        "ptb", vocabulary_size, batches, units=UNITS, layers=LAYERS, warm_up=False, init="ours"
    ).model
    weights = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    for layer in range(LAYERS):
        np.testing.assert_array_equal(
            getattr(theirs.lstm, f"bias_ih_l{layer}").detach().numpy(), weights[3 + 3 * layer]
        )
    np.testing.assert_array_equal(theirs.output.bias.detach().numpy(), weights[-1])


@pytest.mark.skipif(not HAVE_TORCH, reason=NO_TORCH)
def test_same_weights_same_first_steps(peers, workloads):
    """From copied weights both frameworks give the same losses and (unclipped) weights."""
    vocabulary_size, batches = workloads["ptb"]
    steps = _bf16_numerics().same_weights_steps(
        vocabulary_size, batches, 2, units=UNITS, layers=LAYERS
    )
    np.testing.assert_allclose(steps["ours_loss"], steps["torch_loss"], rtol=1e-5)
    assert steps["ours_loss"][0] == pytest.approx(math.log(vocabulary_size), abs=0.05)
    assert max(steps["max_weight_diff"]) < 1e-5
    assert all(n > 0 for n in steps["torch_grad_norm"])


def test_runners_option_selects_a_subset(peers, monkeypatch, capsys):
    seen = {}

    def fake_in_process(runners=None, rounds=9, steps=100, log=print):
        seen.update(runners=runners, rounds=rounds, steps=steps)
        return {"speeds": {name: [2.0, 4.0] for name in runners}}

    monkeypatch.setattr(peers, "in_process", fake_in_process)
    pair = ["ptb ours defaults numpy", "ptb torch autocast-bf16"]
    out = peers.main(["--in-process", "--rounds", "2", "--steps", "3", "--runners", *pair])
    assert seen == {"runners": {n: peers.RUNNERS[n] for n in pair}, "rounds": 2, "steps": 3}
    assert out["ratios"] == {"PTB, defaults vs autocast (bf16)": [1.0, 1.0]}
    with pytest.raises(SystemExit):
        peers.main(["--runners", "ptb ours nothing"])
    assert "invalid choice" in capsys.readouterr().err
