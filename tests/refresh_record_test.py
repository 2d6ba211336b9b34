"""The refresh record of tutorials/README.md: one row per notebook, written by refresh.py --only.

Pure functions on README text; no notebook is executed.
"""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("nbclient")
pytest.importorskip("nbformat")

_PATH = Path(__file__).resolve().parents[1] / "tutorials" / "refresh.py"
_SPEC = importlib.util.spec_from_file_location("tutorials_refresh", _PATH)
refresh = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(refresh)

START, END = "<!-- refresh:start -->", "<!-- refresh:end -->"
README = (
    "# Tutorials\n\nintro\n\n"
    f"{START}\nNot refreshed in full mode yet: quick-mode outputs.\n{END}\n\n"
    "### Quick-mode run times\n\n| notebook | s |\n|---|---|\n| 01 | 31 s |\n"
)


def _row(name, commit="abc1234", seconds=95.4, mode="full"):
    return refresh.record_row(name, "2026-12-07 04:10 UTC", commit, mode, seconds, (2.5, 2.0, 1.25))


def _section(text):
    return text.split(START, 1)[1].split(END, 1)[0]


def _table_rows(text):
    """The data rows of the record table (not its header or separator)."""
    lines = _section(text).splitlines()
    return [line for line in lines if line.startswith("| ") and not line.startswith("| notebook ")]


def test_record_row_formats_every_field():
    row = _row("01_rnn_language_model")
    assert row == (
        "| 01_rnn_language_model | 2026-12-07 04:10 UTC | `abc1234` | full | 95 s "
        "| 2.50 / 2.00 / 1.25 |"
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seconds": -1.0}, "seconds"),
        ({"mode": "fast"}, "mode"),
        ({"name": "a|b"}, "name"),
    ],
)
def test_record_row_refuses_bad_input(kwargs, message):
    args = {"name": "01_x", "seconds": 1.0, "mode": "full", **kwargs}
    with pytest.raises(ValueError, match=message):
        refresh.record_row(
            args["name"], "2026-12-07", "abc", args["mode"], args["seconds"], (1.0, 1.0, 1.0)
        )


def test_first_row_replaces_the_placeholder_and_keeps_the_rest_of_the_readme():
    text = refresh.updated_record(README, _row("02_generation"))
    assert "Not refreshed in full mode yet" not in text
    assert _table_rows(text) == [_row("02_generation")]
    # everything outside the markers is untouched
    assert text.split(START)[0] == README.split(START)[0]
    assert text.split(END)[1] == README.split(END)[1]
    assert text.count(START) == 1 and text.count(END) == 1
    # the table has its header
    assert "| notebook | refreshed (UTC) | commit |" in _section(text)


def test_rows_of_other_notebooks_are_kept_and_sorted():
    text = refresh.updated_record(README, _row("07_export"))
    text = refresh.updated_record(text, _row("01_lm"))
    text = refresh.updated_record(text, _row("03_uses"))
    assert _table_rows(text) == [_row("01_lm"), _row("03_uses"), _row("07_export")]


def test_a_notebooks_row_is_replaced_not_duplicated():
    text = refresh.updated_record(README, _row("01_lm", commit="aaaaaaa", seconds=100))
    text = refresh.updated_record(text, _row("02_gen", commit="aaaaaaa"))
    text = refresh.updated_record(text, _row("01_lm", commit="bbbbbbb", seconds=250))
    rows = _table_rows(text)
    assert rows == [_row("01_lm", commit="bbbbbbb", seconds=250), _row("02_gen", commit="aaaaaaa")]
    assert "aaaaaaa` | full | 100 s" not in text
    # idempotent: writing the same row again changes nothing
    assert refresh.updated_record(text, rows[0]) == text


def test_without_markers_the_section_is_appended():
    text = refresh.updated_record("# Tutorials\n\nno record\n", _row("01_lm"))
    assert text.startswith("# Tutorials\n\nno record\n\n" + START)
    assert text.rstrip("\n").endswith(END)
    assert _table_rows(text) == [_row("01_lm")]


@pytest.mark.parametrize(
    "text",
    [f"{START}\nno end\n", f"{END}\n{START}\n", f"{START}\n{END}\n{START}\n{END}\n"],
)
def test_broken_markers_are_refused(text):
    with pytest.raises(ValueError, match="refresh"):
        refresh.updated_record(text, _row("01_lm"))


def test_a_non_row_is_refused():
    with pytest.raises(ValueError, match="not a record row"):
        refresh.updated_record(README, "just text")


def test_the_committed_readme_has_one_well_formed_refresh_section():
    text = (_PATH.parent / "README.md").read_text()
    assert text.count(START) == 1 and text.count(END) == 1
    # re-recording an existing row (or adding one) keeps the section well formed
    updated = refresh.updated_record(text, _row("99_probe"))
    assert _table_rows(updated)[-1] == _row("99_probe")
    assert updated.split(END)[1] == text.split(END)[1]


def test_problems_finds_tracebacks_warnings_and_tensorflow_info_lines():
    import nbformat

    def cell(*texts):
        outputs = [nbformat.v4.new_output("stream", name="stderr", text=t) for t in texts]
        return nbformat.v4.new_code_cell("x", outputs=outputs)

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        cell("mode: full\nperplexity 12.5\n"),
        cell("ok\nINFO:tensorflow:Assets written to: /tmp/x/assets\n"),
        cell("/a.py:3: UserWarning: careful\n"),
        cell("W0000 00:00:1.0 1 op.cc:1] retracing\n"),
        cell("the word INFO in prose is fine\n"),
    ]
    found = refresh.problems(notebook)
    assert found == [
        "cell 1: INFO:tensorflow:Assets written to: /tmp/x/assets",
        "cell 2: /a.py:3: UserWarning: careful",
        "cell 3: W0000 00:00:1.0 1 op.cc:1] retracing",
    ]
