"""Where a PTB-small training step spends its time: TensorFlow profiler, summed per op.

Runs ``model.fit`` on random ids for the preset model (as ``keras-rnnlm train --preset small``
compiles it, or with ``--jit-compile``/``--output-dtype`` overrides), traces ``--steps``
steps with ``tf.profiler`` and prints the ops with the largest total time per step, summed
over TensorFlow's threads (so concurrent ops can sum to more than the step's wall time).
XLA computations show as their fusion names (``*_fusion``, ``MatMul.N``); graph ops by type.

    python benchmarks/profile_train_step.py [--steps 30] [--top 30]
"""

import argparse
import collections
import glob
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's keras_rnnlm
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402
from train_throughput import KerasRunner  # noqa: E402

WRAPPERS = ("Execute", "ExecutorState", "Eager", "Kernel", "Function", "multi_step", "Block")


def per_op_milliseconds(xplane_path, steps):
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(xplane_path).read_bytes())
    totals, counts = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                name = name.split(":")[-1] if "/" in name else name  # graph op: its type
                if any(w in name for w in WRAPPERS):
                    continue  # executor and runtime frames that enclose the ops
                totals[name] += event.duration_ps / 1e9 / steps
                counts[name] += 1 / steps
    return totals, counts


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--jit-compile", default=None, help='"recurrence", "true" or "false"')
    parser.add_argument("--output-dtype", default=None)
    args = parser.parse_args()
    overrides = {}
    if args.jit_compile is not None:
        overrides["jit_compile"] = {"true": True, "false": False}.get(
            args.jit_compile, args.jit_compile
        )
    if args.output_dtype is not None:
        overrides["output_dtype"] = args.output_dtype
    runner = KerasRunner(False, steps=args.steps, **overrides)
    runner.run()  # warm
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        tokens_per_second = runner.run()
        tf.profiler.experimental.stop()
        (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        totals, counts = per_op_milliseconds(path, args.steps)
    step_ms = 1e3 * 400 / tokens_per_second
    print(f"{tokens_per_second:,.0f} tokens/s while profiling ({step_ms:.1f} ms per step)")
    print(f"{'ms/step':>8} {'calls':>6}  op")
    for name, ms in totals.most_common(args.top):
        print(f"{ms:8.2f} {counts[name]:6.1f}  {name}")


if __name__ == "__main__":
    main()
