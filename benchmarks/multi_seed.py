"""Several seeds of one training preset: every seed's valid/test perplexity, mean and std.

Offline, not in CI (the PTB ``small`` preset trains ~30 min per seed on a CPU). The seeds are
fixed before any run (default 0 1 2) and **all** are reported, none dropped. Each seed trains
into ``<root>/seed_<s>``; a seed whose run directory already holds final metrics (valid and
test perplexity in ``metrics.json``) is skipped, and an interrupted run resumes where it
stopped (``keras_rnnlm.runs.train``), so rerunning the same command finishes the set.

The mean and the standard deviation (``ddof=1``) are taken over seeds of the
log-perplexity (NLL per token), and the mean is shown as a perplexity, ``exp(mean)``; the std
is in nats (a multiplicative spread ``exp(std)`` of the perplexity).

Example (from the repository root):

    python benchmarks/multi_seed.py --preset small --seeds 0 1 2 --root /tmp/ptb_seeds \
        --summary /tmp/ptb_seeds/summary.json
"""

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

SPLITS = ("valid", "test")


def finished_metrics(run_dir) -> dict | None:
    """The run's ``metrics.json`` if it holds the final valid and test figures, else None."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    if all("nll_per_token" in metrics.get(split, {}) for split in SPLITS):
        return metrics
    return None


def summarize(per_seed: dict) -> dict:
    """Mean and std (ddof=1) over seeds of each split's log-perplexity.

    Args:
        per_seed: ``{seed: {"valid": {"nll_per_token", ...}, "test": {...}}}``.

    Returns:
        Per split ``{"perplexities": [per seed], "mean_log_perplexity", "std_log_perplexity",
        "mean_perplexity": exp(mean), "perplexity_range_1std": [exp(mean-std), exp(mean+std)]}``
        and ``"seeds"``.

    Example:

    >>> summarize({0: {"valid": {"nll_per_token": 4.7}, "test": {"nll_per_token": 4.6}},
    ...            1: {"valid": {"nll_per_token": 4.8}, "test": {"nll_per_token": 4.7}}})
    """
    seeds = sorted(per_seed)
    if len(seeds) < 2:
        raise ValueError(f"A standard deviation needs at least 2 seeds, got {len(seeds)}.")
    out = {"seeds": seeds}
    for split in SPLITS:
        logs = np.asarray([per_seed[s][split]["nll_per_token"] for s in seeds], np.float64)
        mean, std = float(logs.mean()), float(logs.std(ddof=1))
        out[split] = {
            "perplexities": [math.exp(v) for v in logs],
            "mean_log_perplexity": mean,
            "std_log_perplexity": std,
            "mean_perplexity": math.exp(mean),
            "perplexity_range_1std": [math.exp(mean - std), math.exp(mean + std)],
        }
    return out


def run_seeds(
    make_config: Callable[[int], object],
    seeds: list[int],
    train: Callable[[object], dict] | None = None,
) -> tuple[dict, list[int]]:
    """Train every seed that has no final metrics yet.

    Args:
        make_config: ``seed -> TrainConfig`` (its ``output`` is the seed's run directory).
        seeds: the seeds, fixed in advance.
        train: the training function (default ``keras_rnnlm.runs.train``).

    Returns:
        ``(per_seed_metrics, trained_seeds)``.
    """
    if train is None:
        from keras_rnnlm.runs import train
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"Seeds repeat: {seeds}.")
    per_seed, trained = {}, []
    for seed in seeds:
        config = make_config(seed)
        metrics = finished_metrics(config.output)
        if metrics is None:
            train(config)
            trained.append(seed)
            metrics = finished_metrics(config.output)
            if metrics is None:
                raise RuntimeError(f"Seed {seed}: {config.output} has no final valid/test metrics.")
        per_seed[seed] = metrics
    return per_seed, trained


def main(argv=None) -> dict:
    """Run the seeds, print and write the JSON summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", help="TrainConfig.from_preset name")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--root", required=True, help="one run directory per seed: <root>/seed_<s>")
    p.add_argument("--summary", required=True, help="JSON summary written here")
    p.add_argument(
        "--overrides", default="{}", help="JSON TrainConfig overrides, e.g. '{\"epochs\": 1}'"
    )
    args = p.parse_args(argv)

    from keras_rnnlm.runs import TrainConfig

    overrides = json.loads(args.overrides)
    root = Path(args.root)

    def make_config(seed):
        output = str(root / f"seed_{seed}")
        return TrainConfig.from_preset(args.preset, **overrides, seed=seed, output=output)

    per_seed, trained = run_seeds(make_config, args.seeds)
    summary = summarize(per_seed)
    summary.update(
        preset=args.preset,
        overrides=overrides,
        trained_now=trained,
        runs={str(s): str(root / f"seed_{s}") for s in args.seeds},
    )
    Path(args.summary).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
