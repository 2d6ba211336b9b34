"""Run a test script in a fresh Python process and read the JSON it prints on a ``RESULT `` line
(a fresh process: logical CPU devices must be configured before TensorFlow starts)."""

import json
import os
import subprocess
import sys

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def script_result(script, *args: str, timeout: float = 600) -> dict:
    """The last ``RESULT {json}`` line the script prints; fails with its stderr if none."""
    out = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout,
        env=ENV,
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])
