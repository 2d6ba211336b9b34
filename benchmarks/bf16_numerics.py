"""Numerics of bfloat16 training (issue 17, item 1): loss curves bf16 against float32.

On PTB-small shapes (2x200 LSTM, vocabulary 10k, batch 20, 20 unrolled steps, stateful, SGD lr
20 + global clip 0.25 on the mean loss) and the first ``--steps`` batches of the real PTB
training stream, the same seed and the same batches for all four models:

  ours fp32        ``RNNLanguageModel(..., output_dtype="float32")``
  ours bf16        ``output_dtype="auto"`` (the library's default: bfloat16 output matmuls in
                   the training step on a CPU with AVX512-BF16/AMX, float32 in evaluation);
                   ``"bfloat16"`` on a CPU where "auto" would resolve to float32
  torch fp32       PyTorch ``nn.LSTM`` (``peer_runners.TorchRunner``)
  torch autocast   the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``

Reported: each model's training loss averaged over windows of ``--window`` steps (ours: from
Keras's running mean, ``(b * mean_b - a * mean_a) / (b - a)`` for steps ``(a, b]``), the largest
window gap bf16 - fp32 per framework, and the validation loss/perplexity after training
(float32 evaluation, state carried, batch 20). Not a timing: it may run beside other jobs
(PyTorch on ``--torch-threads`` 1 by default for that reason).

    python benchmarks/bf16_numerics.py [--steps 1000] [--window 100] [--json out.json]

Initialisation (``--torch-init``, ``--ours-init``; RESULTS.md "Why PyTorch trained faster"):
``uniform`` is PyTorch's usual recipe here (every parameter, biases included, uniform in
[-0.1, 0.1]; the default for PyTorch), ``ours`` the library's (``init_scale=0.1`` weights, LSTM
biases zero except the forget gate's at 1, output bias zero; the default for ours); PyTorch
``copy``: our seed-0 model's initial weights themselves. Subsets:
``--no-ours``, ``--no-torch``, ``--no-bf16``. ``--same-weights K`` instead trains both fp32
models from the same initial weights for K steps and prints the per-step losses and weight
differences (an implementation check: equal up to rounding until the trajectories diverge).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's keras_rnnlm
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import peer_runners  # noqa: E402

PTB_DIR = Path("/work/shared/data/ptb")
OURS_INITS = ("ours", "uniform", "zero-bias")


def ptb_stream_batches(data_dir: Path, split: str, limit: int | None = None):
    """PTB ``split`` as TBPTT batches ``[(x, y), ...]`` of ``(20, 20)``, vocabulary of train.

    Args:
        data_dir: directory with ``ptb.{train,valid,test}.txt``.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        limit: keep the first ``limit`` batches.

    Returns:
        ``(vocabulary_size, batches)``.
    """
    from keras_rnnlm.data import Vocabulary, encode_corpus
    from keras_rnnlm.data.corpora import read_lines
    from keras_rnnlm.data.pipelines import stream_batches, token_stream

    for name in ("train", split):
        if not (data_dir / f"ptb.{name}.txt").is_file():
            raise FileNotFoundError(f"ptb.{name}.txt not found in {data_dir} (--data-dir)")
    train = read_lines(data_dir / "ptb.train.txt")
    vocabulary = Vocabulary.build(train, pretokenized=True)
    lines = train if split == "train" else read_lines(data_dir / f"ptb.{split}.txt")
    stream = token_stream(encode_corpus(vocabulary, lines))
    x, y = stream_batches(stream, peer_runners.PTB_BATCH, peer_runners.PTB_STEPS)
    batches = list(zip(x, y, strict=True))[:limit]
    return vocabulary.size, batches


def window_means_from_running_mean(running: list[float], window: int) -> list[float]:
    """Per-window means of the per-step values behind a running mean (equal-weight steps)."""
    means, previous = [], 0.0
    for end in range(window, len(running) + 1, window):
        total = end * running[end - 1]
        means.append((total - previous) / window)
        previous = total
    return means


def window_means(values: list[float], window: int) -> list[float]:
    """Means of consecutive whole windows of ``values``."""
    n = len(values) // window
    return [float(np.mean(values[i * window : (i + 1) * window])) for i in range(n)]


def train_ours(vocabulary_size, batches, valid, output_dtype, window, init="ours", seed=0):
    import keras

    class RunningLoss(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.values = []

        def on_train_batch_end(self, batch, logs=None):
            self.values.append(float(logs["loss"]))

    from keras_rnnlm import compile_language_model

    if init not in OURS_INITS:
        raise ValueError(f"init must be one of {OURS_INITS}, got {init!r}.")
    model = _our_model(vocabulary_size, output_dtype, init, seed)
    if init == "uniform":
        bias = model.output_layer.bias
        bias.assign(keras.random.uniform(bias.shape, -peer_runners.INIT, peer_runners.INIT))
    compile_language_model(model, "sgd", peer_runners.SGD_LR, peer_runners.SGD_CLIP)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    callback = RunningLoss()
    model.fit(x, y, batch_size=peer_runners.PTB_BATCH, shuffle=False, epochs=1, verbose=0,
              callbacks=[callback])  # fmt: skip
    dtype = model.output_matmul_dtype(training=True)
    model.reset_states()
    vx = np.concatenate([b[0] for b in valid])
    vy = np.concatenate([b[1] for b in valid])
    logs = model.evaluate(vx, vy, batch_size=peer_runners.PTB_BATCH, verbose=0, return_dict=True)
    return dict(
        windows=window_means_from_running_mean(callback.values, window),
        valid_loss=float(logs["loss"]),
        training_output_matmuls=dtype,
    )


def _our_model(vocabulary_size, output_dtype, init="ours", seed=0):
    """``RNNLanguageModel`` in PTB-small shapes, seeded 0 and built (``train_ours``'s).

    ``init="uniform"``: PyTorch's recipe, the LSTM and output biases uniform in [-0.1, 0.1]
    too (no forget bias 1); ``"zero-bias"``: ours with every LSTM bias zero (no forget bias 1).
    """
    import keras

    from keras_rnnlm.models import RNNLanguageModel

    keras.utils.set_random_seed(seed)
    cell_kwargs = None
    if init == "uniform":  # after the seed: Keras draws an initializer's default seed
        uniform = keras.initializers.RandomUniform(-peer_runners.INIT, peer_runners.INIT)
        cell_kwargs = dict(bias_initializer=uniform, unit_forget_bias=False)
    elif init == "zero-bias":  # ours without the forget bias 1
        cell_kwargs = dict(unit_forget_bias=False)
    model = RNNLanguageModel(
        vocabulary_size, num_layers=peer_runners.LAYERS, units=peer_runners.UNITS,
        embedding_dim=peer_runners.UNITS, init_scale=peer_runners.INIT, stateful=True,
        output_dtype=output_dtype, cell_kwargs=cell_kwargs,
    )  # fmt: skip
    model.build((peer_runners.PTB_BATCH, None))
    return model


def train_torch(vocabulary_size, batches, valid, autocast, window, threads=1, init="uniform"):
    import torch

    torch.set_num_threads(threads)
    runner = peer_runners.TorchRunner(
        "ptb", vocabulary_size, batches, autocast=autocast, warm_up=False,
        init="ours" if init == "copy" else init,
    )  # fmt: skip
    if init == "copy":  # the very weights ours starts from (seed 0, the library's init)
        copy_ours_to_torch(_our_model(vocabulary_size, "float32"), runner.model)
    losses = []
    runner.run(losses)
    model = runner.model.eval()
    total, count, state = 0.0, 0, None
    with torch.no_grad():
        for x, y in valid:
            x = torch.tensor(np.asarray(x), dtype=torch.long)
            y = torch.tensor(np.asarray(y), dtype=torch.long)
            logits, state = model(x, state)
            total += float(
                torch.nn.functional.cross_entropy(
                    logits.reshape(-1, vocabulary_size), y.reshape(-1), reduction="sum"
                )
            )
            count += y.numel()
    return dict(
        windows=window_means(losses, window),
        valid_loss=total / count,
        training_output_matmuls="bfloat16" if autocast else "float32",
    )


def copy_ours_to_torch(model, torch_model) -> None:
    """Set ``TorchRunner``'s model to the weights of our ``RNNLanguageModel`` (same shapes).

    Keras keeps ``x @ kernel`` kernels ``(in, out)``, PyTorch ``(out, in)``: transposed. Both
    order the LSTM gates i, f, c (g), o; PyTorch's second bias ``bias_hh`` stays zero.

    Args:
        model: our built model (embedding, ``layers`` LSTM cells, untied dense logits).
        torch_model: ``TorchRunner(...).model``.
    """
    import keras
    import torch

    weights = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    layers = (len(weights) - 3) // 3
    if len(weights) != 3 * layers + 3 or layers != torch_model.lstm.num_layers:
        raise ValueError(f"expected embedding, {torch_model.lstm.num_layers} LSTM cells, dense")
    with torch.no_grad():
        torch_model.embedding.weight.copy_(torch.from_numpy(weights[0]))
        for layer in range(layers):
            kernel, recurrent, bias = weights[1 + 3 * layer : 4 + 3 * layer]
            getattr(torch_model.lstm, f"weight_ih_l{layer}").copy_(torch.from_numpy(kernel.T))
            getattr(torch_model.lstm, f"weight_hh_l{layer}").copy_(torch.from_numpy(recurrent.T))
            getattr(torch_model.lstm, f"bias_ih_l{layer}").copy_(torch.from_numpy(bias))
            getattr(torch_model.lstm, f"bias_hh_l{layer}").zero_()
        torch_model.output.weight.copy_(torch.from_numpy(weights[-2].T))
        torch_model.output.bias.copy_(torch.from_numpy(weights[-1]))


def same_weights_steps(
    vocabulary_size, batches, steps, output_dtype="float32", units=None, layers=None
) -> dict:
    """Both frameworks from our initial weights over the first ``steps`` batches, step by step.

    Our model trains with ``fit`` (the fast path, as in ``train_ours``); PyTorch's gets a copy
    of its initial weights (``copy_ours_to_torch``) and trains with ``TorchRunner``'s step.

    Args:
        vocabulary_size: vocabulary size.
        batches: ``[(x, y), ...]`` stream batches.
        steps: how many of them.
        output_dtype: our model's ``output_dtype``.
        units: LSTM units (default ``peer_runners.UNITS``).
        layers: LSTM layers (default ``peer_runners.LAYERS``).

    Returns:
        ``{"ours_loss", "torch_loss", "torch_grad_norm", "max_weight_diff"}``, lists over the
        steps: the losses, PyTorch's global gradient norm before clipping, and the largest
        absolute difference between the two frameworks' weights after each step.
    """
    import keras
    import torch

    from keras_rnnlm import compile_language_model
    from keras_rnnlm.models import RNNLanguageModel

    units = peer_runners.UNITS if units is None else units
    layers = peer_runners.LAYERS if layers is None else layers
    if not 1 <= steps <= len(batches):
        raise ValueError(f"steps must be in [1, {len(batches)}], got {steps}.")
    batches = batches[:steps]
    batch_size = batches[0][0].shape[0]
    keras.utils.set_random_seed(0)
    model = RNNLanguageModel(
        vocabulary_size, num_layers=layers, units=units, embedding_dim=units,
        init_scale=peer_runners.INIT, stateful=True, output_dtype=output_dtype,
    )  # fmt: skip
    model.build((batch_size, None))
    compile_language_model(model, "sgd", peer_runners.SGD_LR, peer_runners.SGD_CLIP)
    runner = peer_runners.TorchRunner(
        "ptb", vocabulary_size, batches, units=units, layers=layers, warm_up=False
    )
    copy_ours_to_torch(model, runner.model)

    ours_weights, ours_loss = [], []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            ours_weights.append([keras.ops.convert_to_numpy(w) for w in model.trainable_weights])
            ours_loss.append((batch + 1) * float(logs["loss"]) - sum(ours_loss))

    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    model.fit(x, y, batch_size=batch_size, shuffle=False, epochs=1, verbose=0,
              callbacks=[Record()])  # fmt: skip
    torch_model, state = runner.model, None
    torch_loss, norms, diffs = [], [], []
    for step, (xb, yb) in enumerate(runner.batches):
        logits, new_state = torch_model(xb, state)
        loss = runner.loss(logits.reshape(-1, vocabulary_size), yb.reshape(-1))
        state = tuple(s.detach() for s in new_state)
        runner.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(runner.trainable, runner.clip)))
        runner.optimizer.step()
        torch_loss.append(float(loss.detach()))
        mine = copy_weights_like_ours(torch_model)
        diffs.append(
            max(float(np.abs(a - b).max()) for a, b in zip(mine, ours_weights[step], strict=True))
        )
    return dict(ours_loss=ours_loss, torch_loss=torch_loss, torch_grad_norm=norms,
                max_weight_diff=diffs)  # fmt: skip


def copy_weights_like_ours(torch_model) -> list[np.ndarray]:
    """PyTorch's trainable weights in our order and layout (``copy_ours_to_torch`` inverted)."""
    lstm = torch_model.lstm
    out = [torch_model.embedding.weight.detach().numpy().copy()]
    for layer in range(lstm.num_layers):
        out += [
            getattr(lstm, f"weight_ih_l{layer}").detach().numpy().T.copy(),
            getattr(lstm, f"weight_hh_l{layer}").detach().numpy().T.copy(),
            getattr(lstm, f"bias_ih_l{layer}").detach().numpy().copy(),
        ]
    out += [
        torch_model.output.weight.detach().numpy().T.copy(),
        torch_model.output.bias.detach().numpy().copy(),
    ]
    return out


def main(argv=None) -> dict:
    """Train the four models and print their windowed loss curves and the bf16 - fp32 gaps."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--data-dir", type=Path, default=PTB_DIR)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-ours", action="store_true", help="skip our two models")
    parser.add_argument("--no-bf16", action="store_true", help="skip the two bf16 models")
    parser.add_argument(
        "--torch-init",
        choices=(*peer_runners.TORCH_INITS, "copy"),
        default="uniform",
        help="PyTorch's initialisation: 'uniform' (every parameter in [-0.1, 0.1]), 'ours' "
        "(biases zero, forget gate's 1, as RNNLanguageModel) or 'copy' (the very initial "
        "weights of our seed-0 model)",
    )
    parser.add_argument(
        "--ours-init",
        choices=OURS_INITS,
        default="ours",
        help="our initialisation: 'ours' (the library's), 'uniform' (PyTorch-like: LSTM and "
        "output biases uniform in [-0.1, 0.1], no forget bias 1) or 'zero-bias' (ours with the "
        "forget bias 0 too)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="PyTorch threads (1: OpenMP's spinning threads crawl on a shared machine)",
    )
    parser.add_argument("--seed", type=int, default=0, help="our models' seed (PyTorch: 0)")
    parser.add_argument(
        "--same-weights",
        type=int,
        default=0,
        metavar="K",
        help="instead: ours fp32 and torch fp32 from the same initial weights for K steps "
        "(losses, PyTorch's gradient norm, largest weight difference after each step)",
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if args.steps < args.window or args.window < 1:
        parser.error("need --steps >= --window >= 1")
    from keras_rnnlm.fast import bf16_matmul_is_fast

    vocabulary_size, batches = ptb_stream_batches(args.data_dir, "train", args.steps)
    _, valid = ptb_stream_batches(args.data_dir, "valid")
    if len(batches) < args.steps:
        parser.error(f"only {len(batches)} training batches")
    print(
        f"PTB train, first {args.steps} batches of 20x20 (vocabulary {vocabulary_size}); "
        f"valid: {len(valid)} batches; window {args.window} steps"
    )
    if args.same_weights:
        import torch

        torch.set_num_threads(args.torch_threads)
        steps = same_weights_steps(vocabulary_size, batches, args.same_weights)
        print("step  ours loss  torch loss  torch grad norm  max |w_ours - w_torch| after")
        for i in range(args.same_weights):
            print(f"{i + 1:4d}  {steps['ours_loss'][i]:9.6f}  {steps['torch_loss'][i]:10.6f}  "
                  f"{steps['torch_grad_norm'][i]:15.4f}  {steps['max_weight_diff'][i]:.2e}")  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps(steps, indent=1))
        return steps
    ours_bf16 = "auto" if bf16_matmul_is_fast() else "bfloat16"
    runs = {}
    ours_init, torch_init = args.ours_init, args.torch_init
    plans = []
    if not args.no_ours:
        plans.append(
            (
                "ours fp32",
                lambda: train_ours(
                    vocabulary_size, batches, valid, "float32", args.window, ours_init, args.seed
                ),
            )
        )
        if not args.no_bf16:
            plans.append(
                (
                    "ours bf16",
                    lambda: train_ours(
                        vocabulary_size,
                        batches,
                        valid,
                        ours_bf16,
                        args.window,
                        ours_init,
                        args.seed,
                    ),
                )
            )
    if not args.no_torch:
        plans.append(
            (
                "torch fp32",
                lambda: train_torch(
                    vocabulary_size,
                    batches,
                    valid,
                    False,
                    args.window,
                    args.torch_threads,
                    torch_init,
                ),
            )
        )
        if not args.no_bf16:
            plans.append(
                (
                    "torch autocast-bf16",
                    lambda: train_torch(
                        vocabulary_size,
                        batches,
                        valid,
                        True,
                        args.window,
                        args.torch_threads,
                        torch_init,
                    ),
                )
            )
    print(f"initialisation: ours {ours_init!r}, torch {torch_init!r}")
    for name, plan in plans:
        start = time.time()
        runs[name] = plan()
        runs[name]["seconds"] = time.time() - start
        print(
            f"{name:20s} (training output matmuls {runs[name]['training_output_matmuls']}, "
            f"{runs[name]['seconds']:.0f} s): windows "
            + " ".join(f"{v:.3f}" for v in runs[name]["windows"])
            + f"; valid loss {runs[name]['valid_loss']:.4f} "
            f"(perplexity {math.exp(runs[name]['valid_loss']):.1f})"
        )
    gaps = {}
    for framework in ("ours", "torch"):
        fp32, bf16 = (
            runs.get(f"{framework} fp32"),
            runs.get(f"{framework} {'bf16' if framework == 'ours' else 'autocast-bf16'}"),
        )
        if fp32 is None or bf16 is None:
            continue
        diffs = [b - a for a, b in zip(fp32["windows"], bf16["windows"], strict=True)]
        worst = max(range(len(diffs)), key=lambda i: abs(diffs[i]))
        gaps[framework] = dict(
            max_window_gap=diffs[worst],
            window=(worst * args.window + 1, (worst + 1) * args.window),
            last_window_gap=diffs[-1],
            valid_loss_gap=bf16["valid_loss"] - fp32["valid_loss"],
        )
        print(
            f"{framework}: bf16 - fp32 largest window gap {diffs[worst]:+.4f} nats "
            f"(steps {worst * args.window + 1}-{(worst + 1) * args.window}), last window "
            f"{diffs[-1]:+.4f}, valid loss {gaps[framework]['valid_loss_gap']:+.4f}"
        )
    results = {
        "steps": args.steps,
        "window": args.window,
        "ours_init": ours_init,
        "seed": args.seed,
        "torch_init": torch_init,
        "runs": runs,
        "gaps": gaps,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
