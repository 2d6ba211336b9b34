"""Ours against PyTorch's ``nn.LSTM`` like with like, each framework in its own process.

``train_throughput.py --peers`` (issue 17). Each runner trains one epoch of the same batches per
``run()`` and reports tokens/s (real, non-padding target tokens), timed inside its worker after a
warm-up epoch (compilation). Same model (embedding -> 2x200 LSTM -> vocabulary logits, one bias
per gate: PyTorch's second LSTM bias ``bias_hh`` is frozen at zero), optimizer and batches on
both sides:

  ours, numpy        ``model.fit(x, y, batch_size=20, shuffle=False)`` (NumPy arrays)
  ours, tf.data      ``model.fit(Dataset.from_tensor_slices((x, y)).batch(20).prefetch(AUTOTUNE))``
                     (the sentence batches: ``Dataset.from_generator`` over them)
  ours, fp32         ``RNNLanguageModel(..., output_dtype="float32")``
  ours, defaults     ``output_dtype="auto"``: bfloat16 output matmuls on a CPU with AVX512-BF16/AMX
  torch fp32         ``nn.LSTM``; loss, backward, ``clip_grad_norm_``, ``optimizer.step()``
  torch autocast     the same with the forward and loss under
                     ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the one-line bf16 recipe)

Stream workload (PTB-small shapes): stateful, SGD lr 20 + global clip 0.25 on the mean loss
(= Zaremba's lr 1 / clip 5 on the summed loss). Sentence workload (the README's example):
bucketed padded batches, Adam 2e-3 + global clip 5, padding id 0 ignored by the loss.

Fair protocol (``run_peers``): the coordinator imports neither TensorFlow nor PyTorch. It starts
one persistent worker process per framework (``python peer_runners.py --worker tf|torch``, JSON
lines over stdin/stdout), has the TensorFlow worker write the batches once to an ``.npz`` that
both workers load, and runs rounds in which the framework that goes first alternates, with a
short pause after every runner. Only one worker computes at a time; the other waits on its stdin.
``--runners NAME ...`` runs a subset: one of ours and one PyTorch runner then each train alone
in their worker process, as a user's training runs (a runner's speed can depend on what ran
before it in the same process: ``benchmarks/RESULTS.md``, session 14). ``in_process`` is the
old mode (both frameworks in one process).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

UNITS, LAYERS, INIT = 200, 2, 0.1
SGD_LR, SGD_CLIP = 20.0, 0.25
ADAM_LR, ADAM_CLIP = 2e-3, 5.0
PTB_VOCAB, PTB_BATCH, PTB_STEPS = 10000, 20, 20
FRAMEWORKS = ("tf", "torch")
TORCH_INITS = ("uniform", "ours")

#: runner name -> (framework, spec); ``build_runner`` makes one from a spec
RUNNERS: dict[str, tuple[str, dict]] = {
    "ptb ours fp32 numpy": ("tf", dict(workload="ptb", feed="numpy", output_dtype="float32")),
    "ptb ours fp32 tf.data": ("tf", dict(workload="ptb", feed="tf.data", output_dtype="float32")),
    "ptb ours defaults numpy": ("tf", dict(workload="ptb", feed="numpy", output_dtype="auto")),
    "ptb torch fp32": ("torch", dict(workload="ptb", autocast=False)),
    "ptb torch autocast-bf16": ("torch", dict(workload="ptb", autocast=True)),
    "sentences ours fp32": (
        "tf",
        dict(workload="sentences", feed="tf.data", output_dtype="float32"),
    ),
    "sentences ours defaults": (
        "tf",
        dict(workload="sentences", feed="tf.data", output_dtype="auto"),
    ),
    "sentences torch fp32": ("torch", dict(workload="sentences", autocast=False)),
    "sentences torch autocast-bf16": ("torch", dict(workload="sentences", autocast=True)),
}

#: (ours, theirs, what is compared): the same-round ratios reported
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("ptb ours defaults numpy", "ptb torch autocast-bf16", "PTB, defaults vs autocast (bf16)"),
    ("ptb ours fp32 numpy", "ptb torch fp32", "PTB, fp32 vs fp32, NumPy"),
    ("ptb ours fp32 tf.data", "ptb torch fp32", "PTB, fp32 vs fp32, tf.data"),
    ("sentences ours defaults", "sentences torch autocast-bf16", "sentences, defaults vs autocast"),
    ("sentences ours fp32", "sentences torch fp32", "sentences, fp32 vs fp32"),
)


# ---- batches: written once, loaded by both workers ------------------------------------------


def random_stream(
    num_batches: int,
    vocabulary_size: int = PTB_VOCAB,
    batch_size: int = PTB_BATCH,
    num_steps: int = PTB_STEPS,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random token ids in PTB-small stream shapes: ``num_batches`` int32 ``(x, y)`` pairs.

    Args:
        num_batches: how many batches.
        vocabulary_size: ids are drawn from ``[4, vocabulary_size)`` (no padding id 0).
        batch_size: rows per batch.
        num_steps: unrolled steps per row.
        seed: NumPy seed.

    Returns:
        ``[(x, y), ...]``, each ``(batch_size, num_steps)``; ``y`` is ``x`` shifted by one.

    Example:

    >>> x, y = random_stream(3)[0]  # (20, 20) each
    """
    if min(num_batches, batch_size, num_steps) < 1 or vocabulary_size < 5:
        raise ValueError(
            "random_stream needs num_batches, batch_size, num_steps >= 1 and a vocabulary of "
            f"at least 5 ids, got {num_batches}, {batch_size}, {num_steps}, {vocabulary_size}."
        )
    rng = np.random.default_rng(seed)
    data = rng.integers(4, vocabulary_size, size=(num_batches, batch_size, num_steps + 1))
    data = data.astype("int32")
    return list(zip(data[..., :-1], data[..., 1:], strict=True))


def readme_sentence_batches(num_batches: int) -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
    """The README example's first ``num_batches`` bucketed sentence batches (needs TensorFlow).

    Returns:
        ``(vocabulary_size, [(x, y), ...])``: python_docs sentences, ``Vocabulary.build(
        lowercase=True, min_count=2)``, ``sentence_dataset(batch_size=32, seed=0)``.
    """
    from keras_rnnlm.data import Vocabulary, encode_corpus, python_docs_corpus, sentence_dataset

    corpus = python_docs_corpus()
    vocabulary = Vocabulary.build(corpus.train, lowercase=True, min_count=2)
    train = sentence_dataset(encode_corpus(vocabulary, corpus.train), batch_size=32, seed=0)
    return vocabulary.size, list(train.take(num_batches).as_numpy_iterator())


def save_batches(path: str | Path, workloads: dict[str, tuple[int, Sequence]]) -> None:
    """Write each workload's ``(vocabulary_size, [(x, y), ...])`` to one ``.npz``.

    Args:
        path: the ``.npz`` file.
        workloads: name (no spaces or slashes) -> ``(vocabulary_size, batches)``; batches may
            differ in shape (bucketed sentences).
    """
    arrays = {}
    for name, (vocabulary_size, batches) in workloads.items():
        if not batches:
            raise ValueError(f"workload {name!r} has no batches.")
        arrays[f"{name}/vocabulary_size"] = np.asarray(vocabulary_size, np.int64)
        arrays[f"{name}/num_batches"] = np.asarray(len(batches), np.int64)
        for i, (x, y) in enumerate(batches):
            arrays[f"{name}/x{i}"] = np.asarray(x, np.int32)
            arrays[f"{name}/y{i}"] = np.asarray(y, np.int32)
    np.savez(path, **arrays)


def load_batches(path: str | Path) -> dict[str, tuple[int, list[tuple[np.ndarray, np.ndarray]]]]:
    """Read ``save_batches``'s file back: name -> ``(vocabulary_size, [(x, y), ...])``."""
    with np.load(path) as data:
        names = sorted({key.split("/")[0] for key in data.files})
        return {
            name: (
                int(data[f"{name}/vocabulary_size"]),
                [
                    (data[f"{name}/x{i}"], data[f"{name}/y{i}"])
                    for i in range(int(data[f"{name}/num_batches"]))
                ],
            )
            for name in names
        }


def batches_checksum(batches) -> str:
    """SHA-256 of the batches in order (shapes and int64 values): equal batches, equal digest."""
    digest = hashlib.sha256()
    for x, y in batches:
        for array in (np.asarray(x, np.int64), np.asarray(y, np.int64)):
            digest.update(repr(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def expected_parameter_count(vocabulary_size: int, units: int = UNITS, layers: int = LAYERS) -> int:
    """Trainable parameters of embedding -> ``layers`` x LSTM(``units``, one bias) -> logits."""
    lstm = layers * 4 * units * (units + units + 1)  # embedding_dim == units
    return vocabulary_size * units + lstm + units * vocabulary_size + vocabulary_size


# ---- runners ---------------------------------------------------------------------------------


class OursRunner:
    """The library's model compiled with ``compile_language_model``'s defaults.

    Args:
        workload: ``"ptb"`` (stateful stream, SGD) or ``"sentences"`` (Adam).
        vocabulary_size: vocabulary size.
        batches: ``[(x, y), ...]`` int arrays.
        feed: ``"numpy"`` (arrays into ``fit``; stream batches only) or ``"tf.data"``.
        output_dtype: the model's ``output_dtype`` (``"auto"``: the library's default).
        units: LSTM units (and embedding size).
        layers: LSTM layers.
    """

    def __init__(
        self,
        workload: str,
        vocabulary_size: int,
        batches: Sequence,
        feed: str = "numpy",
        output_dtype: str = "auto",
        units: int = UNITS,
        layers: int = LAYERS,
    ):
        import keras
        import tensorflow as tf

        from keras_rnnlm import compile_language_model
        from keras_rnnlm.models import RNNLanguageModel

        if workload not in ("ptb", "sentences"):
            raise ValueError(f"workload must be 'ptb' or 'sentences', got {workload!r}.")
        if feed not in ("numpy", "tf.data"):
            raise ValueError(f"feed must be 'numpy' or 'tf.data', got {feed!r}.")
        stream = workload == "ptb"
        if feed == "numpy" and not stream:
            raise ValueError("feed='numpy' needs equal-shape (stream) batches.")
        keras.utils.set_random_seed(0)
        model = RNNLanguageModel(
            vocabulary_size, num_layers=layers, units=units, embedding_dim=units,
            init_scale=INIT, stateful=stream, output_dtype=output_dtype,
        )  # fmt: skip
        if stream:
            model.build((batches[0][0].shape[0], None))
            compile_language_model(model, "sgd", SGD_LR, SGD_CLIP)
        else:
            compile_language_model(
                model, optimizer="adam", learning_rate=ADAM_LR, clip_norm=ADAM_CLIP
            )
        self.tokens = sum(int(np.count_nonzero(y)) for _, y in batches)
        self.steps = len(batches)
        if stream:
            x = np.concatenate([b[0] for b in batches])
            y = np.concatenate([b[1] for b in batches])
            batch_size = batches[0][0].shape[0]
        if feed == "numpy":
            self.fit_args = dict(x=x, y=y, batch_size=batch_size, shuffle=False)
            fed = [
                (x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)
            ]
        else:
            if stream:
                dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
            else:  # the bucketed batches as a user's generator pipeline
                dataset = tf.data.Dataset.from_generator(
                    lambda: iter(batches),
                    output_signature=(tf.TensorSpec((None, None), tf.int32),) * 2,
                ).apply(tf.data.experimental.assert_cardinality(len(batches)))
            dataset = dataset.prefetch(tf.data.AUTOTUNE)
            self.fit_args = dict(x=dataset, shuffle=False)
            fed = list(dataset.as_numpy_iterator())
        self.checksum = batches_checksum(fed)  # what fit iterates
        self.model = model
        self.output_matmul_dtype = None
        self.run()  # warm-up: compilation (one per bucket shape for sentences)
        self.parameters = sum(int(np.prod(w.shape)) for w in model.trainable_weights)  # built
        self.output_matmul_dtype = model.output_matmul_dtype(training=True)

    def run(self) -> dict:
        """Train one epoch; returns ``tokens_per_s``, ``seconds`` and ``mean_loss``."""
        start = time.perf_counter()
        history = self.model.fit(**self.fit_args, epochs=1, verbose=0)
        seconds = time.perf_counter() - start
        return dict(
            tokens_per_s=self.tokens / seconds,
            seconds=seconds,
            mean_loss=float(history.history["loss"][-1]),
        )


class TorchRunner:
    """The same model and training step in PyTorch, float32 or under bf16 autocast.

    Args:
        workload: ``"ptb"`` (stateful stream, SGD) or ``"sentences"`` (Adam).
        vocabulary_size: vocabulary size.
        batches: ``[(x, y), ...]`` int arrays.
        autocast: forward and loss under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
        units: LSTM units (and embedding size).
        layers: LSTM layers.
        warm_up: train one (untimed) epoch now.
        init: ``"uniform"`` (default): every parameter uniform in ``[-INIT, INIT]`` (PyTorch's
            usual recipe for this model), the frozen second LSTM bias zero. ``"ours"``: as
            ``RNNLanguageModel(..., init_scale=INIT)`` starts: embedding, LSTM kernels and the
            output kernel uniform in ``[-INIT, INIT]``; LSTM biases zero except the forget
            gate's block (``[units, 2 * units)``, the same gate order i, f, g, o) at 1; output
            bias zero.
    """

    def __init__(
        self,
        workload: str,
        vocabulary_size: int,
        batches: Sequence,
        autocast: bool = False,
        units: int = UNITS,
        layers: int = LAYERS,
        warm_up: bool = True,
        init: str = "uniform",
    ):
        import torch
        from torch import nn

        if workload not in ("ptb", "sentences"):
            raise ValueError(f"workload must be 'ptb' or 'sentences', got {workload!r}.")
        if init not in TORCH_INITS:
            raise ValueError(f"init must be one of {TORCH_INITS}, got {init!r}.")
        torch.manual_seed(0)

        class LM(nn.Module):
            def __init__(self):
                super().__init__()
                self.embedding = nn.Embedding(vocabulary_size, units)
                self.lstm = nn.LSTM(units, units, num_layers=layers, batch_first=True)
                self.output = nn.Linear(units, vocabulary_size)
                for p in self.parameters():
                    nn.init.uniform_(p, -INIT, INIT)
                for layer in range(layers):  # one bias per gate, as ours (and Keras)
                    bias = getattr(self.lstm, f"bias_hh_l{layer}")
                    nn.init.zeros_(bias)
                    bias.requires_grad_(False)
                    if init == "ours":  # zeros, forget gate (i, f, g, o) at 1 (unit_forget_bias)
                        bias = getattr(self.lstm, f"bias_ih_l{layer}")
                        with torch.no_grad():
                            bias.zero_()
                            bias[units : 2 * units] = 1.0
                if init == "ours":
                    nn.init.zeros_(self.output.bias)

            def forward(self, x, state):
                h, state = self.lstm(self.embedding(x), state)
                return self.output(h), state

        self.torch, self.autocast = torch, autocast
        self.stream = workload == "ptb"
        self.vocabulary_size = vocabulary_size
        self.model = LM()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.parameters = sum(p.numel() for p in trainable)
        self.trainable = trainable
        if self.stream:
            self.optimizer = torch.optim.SGD(trainable, lr=SGD_LR)
            self.clip = SGD_CLIP
        else:
            self.optimizer = torch.optim.Adam(trainable, lr=ADAM_LR)
            self.clip = ADAM_CLIP
        self.loss = nn.CrossEntropyLoss(ignore_index=0)  # padding id 0 (none in the stream)
        self.batches = [
            (
                torch.tensor(np.asarray(a), dtype=torch.long),
                torch.tensor(np.asarray(b), dtype=torch.long),
            )
            for a, b in batches
        ]
        self.checksum = batches_checksum((a.numpy(), b.numpy()) for a, b in self.batches)
        self.tokens = sum(int(np.count_nonzero(y)) for _, y in batches)
        self.steps = len(batches)
        self.output_matmul_dtype = "bfloat16" if autocast else "float32"
        if warm_up:
            self.run()

    def run(self, losses: list | None = None) -> dict:
        """Train one epoch; returns ``tokens_per_s``, ``seconds`` and ``mean_loss``.

        Args:
            losses: if given, each step's loss is appended to it (a sync per step).
        """
        torch = self.torch
        start = time.perf_counter()
        state = None
        total = torch.zeros(())
        for x, y in self.batches:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
                logits, new_state = self.model(x, state if self.stream else None)
                loss = self.loss(logits.reshape(-1, self.vocabulary_size), y.reshape(-1))
            state = tuple(s.detach() for s in new_state)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable, self.clip)
            self.optimizer.step()
            total += loss.detach().float()
            if losses is not None:
                losses.append(float(loss.detach().float()))
        seconds = time.perf_counter() - start
        return dict(
            tokens_per_s=self.tokens / seconds,
            seconds=seconds,
            mean_loss=float(total) / len(self.batches),
        )


def build_runner(framework: str, spec: dict, data: dict, units: int = UNITS, layers: int = LAYERS):
    """A runner from a ``RUNNERS`` spec over ``load_batches``'s ``data``."""
    vocabulary_size, batches = data[spec["workload"]]
    if framework == "tf":
        return OursRunner(
            spec["workload"], vocabulary_size, batches, feed=spec.get("feed", "numpy"),
            output_dtype=spec.get("output_dtype", "auto"), units=units, layers=layers,
        )  # fmt: skip
    if framework == "torch":
        return TorchRunner(
            spec["workload"], vocabulary_size, batches, autocast=spec.get("autocast", False),
            units=units, layers=layers, init=spec.get("init", "uniform"),
        )  # fmt: skip
    raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}.")


# ---- worker process ----------------------------------------------------------------------------


class _Worker:
    """Command handler of one framework's worker process."""

    def __init__(self, framework: str):
        if framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}.")
        self.framework = framework
        self.runners = {}

    def prepare(self, path, steps, sentences=True, seed=0):
        workloads = {"ptb": (PTB_VOCAB, random_stream(steps, seed=seed))}
        if sentences:
            workloads["sentences"] = readme_sentence_batches(steps)
        save_batches(path, workloads)
        return {"path": str(path)}

    def setup(self, path, runners, units=UNITS, layers=LAYERS):
        data = load_batches(path)
        if self.framework == "torch":
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            info = {"version": torch.__version__, "threads": torch.get_num_threads()}
        else:
            import tensorflow as tf

            info = {"version": tf.__version__, "threads": os.cpu_count()}
        reply = {}
        for name, spec in runners.items():
            runner = build_runner(self.framework, spec, data, units, layers)
            self.runners[name] = runner
            reply[name] = dict(
                checksum=runner.checksum, parameters=runner.parameters, tokens=runner.tokens,
                steps=runner.steps, output_matmul_dtype=runner.output_matmul_dtype,
            )  # fmt: skip
        return {"framework": self.framework, "pid": os.getpid(), **info, "runners": reply}

    def run(self, name):
        started, before = time.time(), resource.getrusage(resource.RUSAGE_SELF)
        figures = self.runners[name].run()
        after = resource.getrusage(resource.RUSAGE_SELF)
        # this process's CPU time over the epoch (it runs nothing else meanwhile): cores busy,
        # and the system time (page faults of per-step buffers) that moves between processes
        cpu = dict(
            user_s=after.ru_utime - before.ru_utime, system_s=after.ru_stime - before.ru_stime
        )
        return {"name": name, "started": started, "finished": time.time(), **figures, **cpu}

    def imported(self):
        return {"tensorflow": "tensorflow" in sys.modules, "torch": "torch" in sys.modules}


def worker_main(framework: str) -> None:
    """Serve JSON-line commands on stdin until ``quit`` (or EOF): one reply line per command.

    Commands: ``{"cmd": "prepare", "path", "steps"}`` (TensorFlow worker: write the batches),
    ``{"cmd": "setup", "path", "runners": {name: spec}}`` (build and warm up),
    ``{"cmd": "run", "name"}`` (one timed epoch), ``{"cmd": "imported"}``, ``{"cmd": "quit"}``.
    A failing command replies ``{"error": ...}``.
    """
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything the frameworks print goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    worker = _Worker(framework)
    for line in sys.stdin:
        message = json.loads(line)
        command = message.pop("cmd")
        if command == "quit":
            break
        try:
            reply = getattr(worker, command)(**message)
        except Exception as error:  # reported to the coordinator, which raises
            reply = {
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
            }
        protocol.write(json.dumps(reply) + "\n")


# ---- coordinator (imports neither framework) ---------------------------------------------------


class WorkerProcess:
    """One framework's persistent worker: ``call(cmd, **arguments)`` -> reply dict.

    Args:
        framework: ``"tf"`` or ``"torch"``.
        log_path: where the worker's stderr goes (framework logs).
        env: extra environment variables.
    """

    def __init__(self, framework: str, log_path: str | Path, env: dict | None = None):
        if framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}.")
        self.framework = framework
        self.log_path = Path(log_path)
        repo = str(Path(__file__).resolve().parents[1])
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (repo, environment.get("PYTHONPATH", "")) if p
        )
        self._log = open(self.log_path, "w")  # closed in close()
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", framework],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            bufsize=1, env=environment,
        )  # fmt: skip

    def call(self, cmd: str, **arguments) -> dict:
        self.process.stdin.write(json.dumps({"cmd": cmd, **arguments}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the {self.framework} worker died (exit code {self.process.wait()}); "
                f"its log: {self.log_path}"
            )
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(
                f"the {self.framework} worker failed on {cmd!r}: {reply['error']}\n{reply['traceback']}"
            )
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self._log.close()


def run_peers(
    workdir: str | Path,
    runners: dict[str, tuple[str, dict]] | None = None,
    rounds: int = 9,
    steps: int = 100,
    pause: float = 1.0,
    units: int = UNITS,
    layers: int = LAYERS,
    batches_path: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Alternating rounds of every runner, each framework in its own persistent worker process.

    Args:
        workdir: directory for the batches file and the workers' logs.
        runners: name -> ``(framework, spec)``; default ``RUNNERS``.
        rounds: rounds; round ``r`` starts with TensorFlow when ``r`` is even, else PyTorch.
        steps: batches per workload (when this function writes them).
        pause: seconds of sleep after every runner.
        units: LSTM units (small for tests).
        layers: LSTM layers.
        batches_path: an existing ``save_batches`` file to use instead of writing one.
        log: where the progress lines go.

    Returns:
        ``{"setup": {framework: setup reply}, "rounds": [{"first", "order", "figures"}],
        "speeds": {name: [tokens/s per round]}}``.

    Example:

    >>> results = run_peers("/tmp/peers", rounds=9, steps=60)
    >>> same_round_ratios(results["speeds"], "ptb ours fp32 numpy", "ptb torch fp32")
    """
    if rounds < 1 or steps < 1 or pause < 0:
        raise ValueError(
            f"need rounds >= 1, steps >= 1, pause >= 0; got {rounds}, {steps}, {pause}."
        )
    runners = dict(RUNNERS if runners is None else runners)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    by_framework = {f: {n: s for n, (fw, s) in runners.items() if fw == f} for f in FRAMEWORKS}
    workers = {}
    try:
        for framework in FRAMEWORKS:
            if by_framework[framework]:
                workers[framework] = WorkerProcess(framework, workdir / f"{framework}_worker.log")
        if batches_path is None:
            batches_path = workdir / "batches.npz"
            sentences = any(spec["workload"] == "sentences" for _, spec in runners.values())
            tf_worker = workers.get("tf") or WorkerProcess("tf", workdir / "prepare.log")
            try:
                tf_worker.call("prepare", path=str(batches_path), steps=steps, sentences=sentences)
            finally:
                if "tf" not in workers:
                    tf_worker.close()
        setup = {}
        for framework, worker in workers.items():
            setup[framework] = worker.call(
                "setup", path=str(batches_path), runners=by_framework[framework], units=units,
                layers=layers,
            )  # fmt: skip
            setup[framework]["imported"] = worker.call("imported")
            for name, info in setup[framework]["runners"].items():
                log(f"{name}: {info['steps']} steps, {info['tokens']:,} tokens, "
                    f"{info['parameters']:,} parameters, output matmuls {info['output_matmul_dtype']}, "
                    f"batches {info['checksum'][:12]}")  # fmt: skip
        speeds = {name: [] for name in runners}
        records = []
        for r in range(rounds):
            order = list(workers) if r % 2 == 0 else list(reversed(workers))
            figures = {}
            for framework in order:
                for name in by_framework[framework]:
                    figures[name] = workers[framework].call("run", name=name)
                    speeds[name].append(figures[name]["tokens_per_s"])
                    time.sleep(pause)
            records.append({"first": order[0], "order": order, "figures": figures})
            log(f"round {r + 1} ({order[0]} first): "
                + ", ".join(f"{n} {f['tokens_per_s']:,.0f}" for n, f in figures.items()))  # fmt: skip
        log("\nCPU per round, median (user + system seconds over wall seconds = cores busy):")
        for name in runners:
            figures = [record["figures"][name] for record in records]
            user = statistics.median(f["user_s"] for f in figures)
            system = statistics.median(f["system_s"] for f in figures)
            cores = statistics.median((f["user_s"] + f["system_s"]) / f["seconds"] for f in figures)
            log(f"  {name:32s} user {user:6.2f} s, system {system:5.2f} s, {cores:.2f} cores")
        return {"setup": setup, "rounds": records, "speeds": speeds}
    finally:
        for worker in workers.values():
            worker.close()


def in_process(
    runners: dict[str, tuple[str, dict]] | None = None,
    rounds: int = 9,
    steps: int = 100,
    log: Callable[[str], None] = print,
) -> dict:
    """The old mode: every runner in this process (both frameworks loaded), in a fixed order."""
    runners = dict(RUNNERS if runners is None else runners)
    data = {"ptb": (PTB_VOCAB, random_stream(steps))}
    if any(spec["workload"] == "sentences" for _, spec in runners.values()):
        data["sentences"] = readme_sentence_batches(steps)
    if any(framework == "torch" for framework, _ in runners.values()):
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    built = {name: build_runner(fw, spec, data) for name, (fw, spec) in runners.items()}
    speeds = {name: [] for name in built}
    for r in range(rounds):
        for name, runner in built.items():
            speeds[name].append(runner.run()["tokens_per_s"])
        log(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in speeds.items()))
    return {"speeds": speeds}


def same_round_ratios(speeds: dict[str, list[float]], ours: str, theirs: str) -> list[float]:
    """``ours / theirs`` tokens/s of each round."""
    return [a / b for a, b in zip(speeds[ours], speeds[theirs], strict=True)]


def report(
    speeds: dict[str, list[float]],
    rounds: int,
    steps: int,
    protocol: str = "alternating",
    log=print,
) -> dict:
    """Print medians [min, max] and the ``PAIRS``' same-round ratios; returns the ratios."""
    log(f"\ntokens/s, {rounds} {protocol} rounds of {steps} steps (median [min, max]):")
    for name, values in speeds.items():
        log(
            f"  {name:32s} {statistics.median(values):8,.0f} [{min(values):,.0f}, {max(values):,.0f}]"
        )
    log("\nsame-round ratios ours / PyTorch (issue 17 target >= 1.2x):")
    ratios = {}
    for ours, theirs, label in PAIRS:
        if ours not in speeds or theirs not in speeds:
            continue
        values = same_round_ratios(speeds, ours, theirs)
        ratios[label] = values
        log(
            f"  {label:34s} median {statistics.median(values):.2f}x "
            f"[{min(values):.2f}, {max(values):.2f}] ({', '.join(f'{q:.2f}' for q in values)})"
        )
    return ratios


def main(argv: Sequence[str] | None = None) -> dict:
    """``train_throughput.py --peers [--rounds 9] [--steps 100] [--pause 1] [--in-process]``."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--peers", action="store_true", help="(accepted: train_throughput.py's switch)"
    )
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--steps", type=int, default=100, help="training steps per runner and round"
    )
    parser.add_argument(
        "--pause", type=float, default=1.0, help="seconds of sleep after each runner"
    )
    parser.add_argument(
        "--runners",
        nargs="+",
        choices=list(RUNNERS),
        metavar="NAME",
        help="only these runners (default: all); e.g. one of ours and one PyTorch runner, "
        "each then alone in its framework's worker",
    )
    parser.add_argument("--in-process", action="store_true", help="the old mode: one process")
    parser.add_argument("--workdir", help="batches and worker logs (default: a temp dir)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    start = time.time()
    runners = {name: RUNNERS[name] for name in args.runners} if args.runners else None
    if args.in_process:
        results = in_process(runners, rounds=args.rounds, steps=args.steps)
    else:
        workdir = args.workdir or tempfile.mkdtemp(prefix="peers_")
        print(f"workers' logs and batches: {workdir}")
        results = run_peers(
            workdir, runners, rounds=args.rounds, steps=args.steps, pause=args.pause
        )
    protocol = "one-process" if args.in_process else "two-process alternating"
    results["ratios"] = report(results["speeds"], args.rounds, args.steps, protocol)
    print(f"\nwall time {time.time() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2])
    else:
        main()
