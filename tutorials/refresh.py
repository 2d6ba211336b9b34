"""Re-execute the tutorial notebooks and store their outputs (full mode by default).

The stored outputs of the notebooks are those of the full run (``KERAS_RNNLM_TUTORIAL=full``);
CI re-executes them in quick mode. This script runs each notebook from top to bottom in a fresh
kernel, with this checkout's ``keras_rnnlm`` first on ``PYTHONPATH``, writes it back with its
new outputs, scans the outputs for tracebacks and warnings, and records the date, the commit
and every notebook's run time in ``tutorials/README.md`` (between the ``refresh`` markers).

Usage (from the repository root or from ``tutorials/``)::

    python tutorials/refresh.py                     # every notebook, full mode (tens of minutes)
    python tutorials/refresh.py --only 01 04        # some notebooks
    python tutorials/refresh.py --mode quick --dry-run   # time the CI setting, keep the files

A notebook whose outputs contain a traceback or a warning makes the script exit with status 1
(after every notebook ran); nothing is filtered or edited out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parent
ROOT = TUTORIALS.parent
START, END = "<!-- refresh:start -->", "<!-- refresh:end -->"
#: output text that must never be stored: tracebacks, Python and TensorFlow/Keras warnings
PROBLEMS = re.compile(r"Traceback|Warning:|WARNING|^W\d{4} ", re.MULTILINE)


def notebooks(only: list[str] | None) -> list[Path]:
    """The numbered notebooks, sorted; ``only``: name prefixes to keep ("01", "04_exp")."""
    paths = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(prefix) for prefix in only)]
    return paths


def problems(notebook) -> list[str]:
    """Tracebacks and warnings in a notebook's outputs, as ``cell N: first line``."""
    found = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                found.append(f"cell {index}: {output.get('ename')}: {output.get('evalue')}")
                continue
            text = output.get("text", "")
            if isinstance(text, list):
                text = "".join(text)
            match = PROBLEMS.search(text)
            if match:
                line = text[text.rfind("\n", 0, match.start()) + 1 :].split("\n", 1)[0]
                found.append(f"cell {index}: {line[:160]}")
    return found


def execute(path: Path, mode: str, write: bool) -> tuple[float, list[str]]:
    """Run ``path`` in a fresh kernel; returns (seconds, problems). Writes it if ``write``."""
    notebook = nbformat.read(path, as_version=4)
    env_before = dict(os.environ)
    os.environ["KERAS_RNNLM_TUTORIAL"] = mode
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env_before.get("PYTHONPATH")])]
    )
    start = time.perf_counter()
    try:
        NotebookClient(
            notebook,
            timeout=None,
            kernel_name="python3",
            resources={"metadata": {"path": str(TUTORIALS)}},
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    seconds = time.perf_counter() - start
    if write:
        nbformat.write(notebook, path)
    return seconds, problems(notebook)


def record(rows: list[tuple[str, float]], mode: str) -> None:
    """Replace the refresh section of tutorials/README.md with this run's date, commit, times."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        START,
        f"Last refresh: {date}, commit `{commit}`, `python tutorials/refresh.py` "
        f"(`KERAS_RNNLM_TUTORIAL={mode}`).",
        "",
        f"| notebook | {mode} run time |",
        "|---|---|",
        *[f"| {name} | {seconds:.0f} s |" for name, seconds in rows],
        END,
    ]
    readme = TUTORIALS / "README.md"
    text = readme.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + "\n".join(lines) + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    readme.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("full", "quick"), default="full")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 04")
    parser.add_argument(
        "--dry-run", action="store_true", help="execute and check, but write nothing"
    )
    args = parser.parse_args(argv)
    rows, failed = [], False
    for path in notebooks(args.only):
        seconds, found = execute(path, args.mode, write=not args.dry_run)
        rows.append((path.stem, seconds))
        print(f"{path.name}: {seconds:.0f} s" + ("" if not found else f", {len(found)} problem(s)"))
        for line in found:
            print("   ", line)
        failed |= bool(found)
    if not args.dry_run and rows and not args.only:
        record(rows, args.mode)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
