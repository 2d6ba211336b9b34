"""benchmarks/multi_seed.py: resume skipping and the summary's arithmetic (tiny runs only)."""

import importlib.util
import json
import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "multi_seed.py"


@pytest.fixture(scope="module")
def multi_seed():
    spec = importlib.util.spec_from_file_location("multi_seed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metrics(valid, test):
    return {"valid": {"nll_per_token": valid}, "test": {"nll_per_token": test}}


def test_finished_seeds_are_skipped_and_unfinished_ones_trained(multi_seed, tmp_path):
    nlls = {0: (4.70, 4.65), 1: (4.81, 4.77), 2: (4.62, 4.60)}
    (tmp_path / "seed_1").mkdir()
    (tmp_path / "seed_1" / "metrics.json").write_text(json.dumps(_metrics(*nlls[1])))
    (tmp_path / "seed_2").mkdir()  # interrupted: valid figure only, must be trained again
    (tmp_path / "seed_2" / "metrics.json").write_text(json.dumps({"valid": {"nll_per_token": 9}}))
    calls = []

    def fake_train(config):
        calls.append(config.seed)
        Path(config.output).mkdir(exist_ok=True)
        Path(config.output, "metrics.json").write_text(json.dumps(_metrics(*nlls[config.seed])))

    def make_config(seed):
        return SimpleNamespace(seed=seed, output=str(tmp_path / f"seed_{seed}"))

    per_seed, trained = multi_seed.run_seeds(make_config, [0, 1, 2], train=fake_train)
    assert trained == calls == [0, 2]
    assert sorted(per_seed) == [0, 1, 2]
    per_seed, trained = multi_seed.run_seeds(make_config, [0, 1, 2], train=fake_train)
    assert trained == [] and calls == [0, 2]  # a rerun trains nothing
    with pytest.raises(ValueError, match="repeat"):
        multi_seed.run_seeds(make_config, [0, 0], train=fake_train)

    summary = multi_seed.summarize(per_seed)
    for i, split in enumerate(("valid", "test")):
        logs = [nlls[s][i] for s in (0, 1, 2)]
        mean, std = statistics.fmean(logs), statistics.stdev(logs)  # stdev: n - 1
        assert summary[split]["mean_log_perplexity"] == pytest.approx(mean, rel=1e-12)
        assert summary[split]["std_log_perplexity"] == pytest.approx(std, rel=1e-12)
        assert summary[split]["mean_perplexity"] == pytest.approx(math.exp(mean), rel=1e-12)
        np.testing.assert_allclose(summary[split]["perplexities"], np.exp(logs), rtol=1e-12)
        low, high = summary[split]["perplexity_range_1std"]
        assert low == pytest.approx(math.exp(mean - std)) and high == pytest.approx(
            math.exp(mean + std)
        )
    with pytest.raises(ValueError, match="at least 2 seeds"):
        multi_seed.summarize({0: per_seed[0]})


def test_main_trains_a_tiny_preset_once_and_resumes(multi_seed, tmp_path, capsys):
    sentences = ["the cat sat on the mat .", "a dog ran to the park .", "the bird sang ."]
    rng = np.random.default_rng(0)
    text = "\n".join(sentences[i] for i in rng.integers(0, 3, size=120)) + "\n"
    for name in ("train", "valid", "test"):
        (tmp_path / f"{name}.txt").write_text(text if name == "train" else text[:400])
    overrides = {
        "train_file": str(tmp_path / "train.txt"),
        "valid_file": str(tmp_path / "valid.txt"),
        "test_file": str(tmp_path / "test.txt"),
        "num_layers": 1,
        "units": 8,
        "embedding_dim": 8,
        "batch_size": 4,
        "num_steps": 5,
        "epochs": 1,
        "verbose": 0,
    }
    root = tmp_path / "seeds"
    (root / "seed_0").mkdir(parents=True)  # seed 0 already done (as if by an earlier call)
    (root / "seed_0" / "metrics.json").write_text(json.dumps(_metrics(1.5, 1.6)))
    argv = ["--seeds", "0", "1", "--root", str(root), "--summary", str(tmp_path / "s.json")]
    argv += ["--overrides", json.dumps(overrides)]
    summary = multi_seed.main(argv)
    assert summary["trained_now"] == [1] and summary["preset"] == "small"
    config = json.loads((root / "seed_1" / "config.json").read_text())
    assert config["seed"] == 1 and config["units"] == 8  # the preset, overridden
    trained = json.loads((root / "seed_1" / "metrics.json").read_text())
    assert summary["test"]["perplexities"][1] == pytest.approx(trained["test"]["perplexity"])
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(json.dumps(summary))
    assert multi_seed.main(argv)["trained_now"] == []  # rerun: nothing left to train
