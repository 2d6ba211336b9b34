"""Re-execute the tutorial notebooks and store their outputs (full mode by default).

The stored outputs of the notebooks are those of the full run (``KERAS_RNNLM_TUTORIAL=full``);
CI re-executes them in quick mode. This script runs each notebook from top to bottom in a fresh
kernel, with this checkout's ``keras_rnnlm`` first on ``PYTHONPATH``, writes it back with its
new outputs, scans the outputs for tracebacks and warnings, and records each notebook's row
(date, commit, mode, run time, load average at the start) in ``tutorials/README.md`` (a table
between the ``refresh`` markers): a row is added or replaced, the other notebooks' rows are kept,
so notebooks can be refreshed one at a time. ``--dry-run`` records nothing.

Usage (from the repository root or from ``tutorials/``)::

    python tutorials/refresh.py                     # every notebook, full mode (tens of minutes)
    python tutorials/refresh.py --only 01 04        # some notebooks
    python tutorials/refresh.py --mode quick --dry-run   # time the CI setting, keep the files

A notebook whose outputs contain a traceback, a warning or a TensorFlow INFO log line makes
the script exit with status 1
(after every notebook ran); nothing is filtered or edited out.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

TUTORIALS = Path(__file__).resolve().parent
ROOT = TUTORIALS.parent
START, END = "<!-- refresh:start -->", "<!-- refresh:end -->"
#: output text that must never be stored: tracebacks, Python and TensorFlow/Keras warnings,
#: and TensorFlow's own INFO lines (e.g. ``INFO:tensorflow:Assets written to``: log noise)
PROBLEMS = re.compile(r"Traceback|Warning:|WARNING|^W\d{4} |^INFO:tensorflow:", re.MULTILINE)


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


#: the header of the record table between the markers (one row per notebook)
TABLE_HEADER = (
    "| notebook | refreshed (UTC) | commit | mode | run time | load average at start (1/5/15 min) |",
    "|---|---|---|---|---|---|",
)
#: the paragraph above the table
RECORD_INTRO = (
    "Each row is the last refresh of one notebook: `python tutorials/refresh.py --only NN` "
    "(`KERAS_RNNLM_TUTORIAL=full` unless the mode column says otherwise), run from the "
    "repository root in a fresh kernel. The commit is the checkout's HEAD when the run ended: "
    "the library code it ran; edits to the notebook itself are committed with its refreshed "
    "outputs in a later commit. The run time is wall-clock time "
    "on the machine of that refresh; the load average at its start says how much else was "
    "running (2 CPU cores: a load above 2 means the notebook shared them, so it ran slower "
    "than on an idle machine)."
)


def record_row(
    name: str, date: str, commit: str, mode: str, seconds: float, load: tuple[float, ...]
) -> str:
    """One row of the refresh table.

    Args:
        name: the notebook's stem, e.g. ``"01_rnn_language_model"``.
        date: when the refresh started, e.g. ``"2026-12-07 04:10 UTC"``.
        commit: the short commit hash the notebook ran at.
        mode: ``"full"`` or ``"quick"``.
        seconds: the notebook's wall-clock run time.
        load: ``os.getloadavg()`` at the start of the run (1, 5, 15 min).

    Returns:
        The Markdown table row (no trailing newline).

    Example:
        >>> record_row("01_x", "2026-12-07 04:10 UTC", "abc1234", "full", 95.4, (2.5, 2.0, 1.0))
        '| 01_x | 2026-12-07 04:10 UTC | `abc1234` | full | 95 s | 2.50 / 2.00 / 1.00 |'
    """
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    if mode not in ("full", "quick"):
        raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}")
    if "|" in name or not name:
        raise ValueError(f"bad notebook name {name!r}")
    loads = " / ".join(f"{value:.2f}" for value in load)
    return f"| {name} | {date} | `{commit}` | {mode} | {seconds:.0f} s | {loads} |"


def _row_name(line: str) -> str | None:
    """The notebook name of a data row of the record table, else None."""
    cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
    if not line.lstrip().startswith("|") or len(cells) < 2:
        return None
    if cells[0] in ("notebook", "") or set(cells[0]) <= set("-: "):
        return None
    return cells[0]


def updated_record(text: str, row: str) -> str:
    r"""``text`` (the README) with ``row`` added to the refresh table, or replacing its notebook's row.

    The table lives between the ``<!-- refresh:start -->`` and ``<!-- refresh:end -->`` markers;
    rows of other notebooks are kept, and the rows are sorted by notebook name. Anything between
    the markers that is not the table (e.g. an old "not refreshed yet" paragraph) is replaced by
    the standard introduction. Without markers, the section is appended at the end of ``text``.

    Args:
        text: the README's text.
        row: a row from `record_row`.

    Returns:
        The new README text.

    Example:
        >>> text = "intro\n<!-- refresh:start -->\nold\n<!-- refresh:end -->\nrest\n"
        >>> row = record_row("01_a", "2026-12-07 04:10 UTC", "abc", "full", 9, (1.0, 1.0, 1.0))
        >>> "| 01_a |" in updated_record(text, row)
        True
    """
    name = _row_name(row)
    if name is None:
        raise ValueError(f"not a record row: {row!r}")
    if text.count(START) > 1 or text.count(END) > 1:
        raise ValueError("the README has more than one refresh section")
    if (START in text) != (END in text) or (START in text and text.index(START) > text.index(END)):
        raise ValueError(f"the README's refresh markers are unbalanced: {START} ... {END}")
    if START in text:
        head, rest = text.split(START, 1)
        body, tail = rest.split(END, 1)
    else:
        head, body, tail = text.rstrip("\n") + "\n\n", "", "\n"
    rows = {}
    for line in body.splitlines():
        key = _row_name(line)
        if key is not None and line.strip() not in TABLE_HEADER:
            rows[key] = line.strip()
    rows[name] = row.strip()
    section = [
        START,
        textwrap.fill(RECORD_INTRO, width=100),
        "",
        *TABLE_HEADER,
        *(rows[key] for key in sorted(rows)),
        END,
    ]
    return head + "\n".join(section) + tail


def record(name: str, mode: str, seconds: float, date: str, load: tuple[float, ...]) -> None:
    """Add or replace ``name``'s row of the refresh table in tutorials/README.md."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    readme = TUTORIALS / "README.md"
    row = record_row(name, date, commit, mode, seconds, load)
    readme.write_text(updated_record(readme.read_text(), row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("full", "quick"), default="full")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 04")
    parser.add_argument(
        "--dry-run", action="store_true", help="execute and check, but write nothing"
    )
    args = parser.parse_args(argv)
    failed = False
    paths = notebooks(args.only)
    if not paths:
        parser.error(f"no notebook matches {args.only}")
    for path in paths:
        date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        load = os.getloadavg()
        seconds, found = execute(path, args.mode, write=not args.dry_run)
        print(
            f"{path.name}: {seconds:.0f} s (load at start {load[0]:.2f})"
            + ("" if not found else f", {len(found)} problem(s)")
        )
        for line in found:
            print("   ", line)
        failed |= bool(found)
        if not args.dry_run:
            record(path.stem, args.mode, seconds, date, load)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
