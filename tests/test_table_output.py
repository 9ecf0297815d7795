"""``--format table`` read back cell by cell: every row is its record (path, label or labels, score,
next best) in the records' order, checked against the JSON Lines of the same run; nothing is only
"somewhere in the output"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from zeroshot.model.models import BUNDLED_NAME

from .conftest import DATA, invoke

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"
ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))  # the installed console script
FASHION = ["-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-k", "4", "-q"]


def table_rows(table: str) -> tuple[list[str], list[list[str]]]:
    """The header and the body rows of a drawn table, cell by cell (stripped); a cell folded onto
    more lines (a long path at a narrow terminal) is joined again."""
    lines = table.splitlines()
    assert lines[0].startswith("┏") and lines[2].startswith("┡") and lines[-1].startswith("└"), table
    header = [cell.strip() for cell in lines[1].split("┃")[1:-1]]
    rows: list[list[str]] = []
    for line in lines[3:-1]:
        assert line.startswith("│") and line.endswith("│"), line
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        assert len(cells) == len(header), line
        if rows and not any(cells[1:]):  # the next piece of a folded path
            rows[-1][0] += cells[0]
        else:
            rows.append(cells)
    return header, rows


def expected_row(record: dict, multi_label: bool = False) -> list[str]:
    """A record's row as the README describes it: the label (or the present labels; "none of these"
    or "none over the threshold" when there is none), the score to 4 places, and as "next best" the
    two best labels not in the label column with their scores to 3 places; an error's row says so."""
    if "error" in record:
        return [record["path"], "error", "", record["error"]]
    shown = record["labels"] if multi_label else [record["label"]] if record["label"] is not None else []
    others = [t for t in record["top_k"] if t["label"] not in shown][:2]
    none = "none over the threshold" if multi_label else "none of these"
    return [record["path"], ", ".join(shown) or none, f"{record['score']:.4f}",
            ", ".join(f"{t['label']} {t['score']:.3f}" for t in others)]  # fmt: skip


def assert_table_is(table: str, records: list[dict], multi_label: bool = False) -> list[list[str]]:
    """The table has exactly one row per record, in order, each the record's cells; its rows."""
    header, rows = table_rows(table)
    assert header == ["path", "labels" if multi_label else "label", "score", "next best"]
    assert rows == [expected_row(r, multi_label) for r in records]
    return rows


def records_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_table_rows_are_the_records_with_errors_and_min_score(tmp_path):
    inputs = [str(EXAMPLES / n) for n in ("bag-0018.png", "coat-0017.png", "t-shirt-top-0027.png", "shirt-0026.png")]
    inputs += [str(DATA / "not-an-image.txt"), str(tmp_path / "missing.png")]
    for extra in ([], ["--min-score", "0.6"]):
        lines = invoke("classify", *inputs, *FASHION, *extra)
        table = invoke("classify", *inputs, *FASHION, *extra, "-f", "table")
        assert lines.exit_code == table.exit_code == 1  # the two broken inputs
        records = records_of(lines.stdout)
        rows = assert_table_is(table.stdout, records)
        labelled = [row[1] for row in rows if row[1] not in ("error", "none of these")]
        assert len(labelled) >= 2 and rows[-1][1:] == ["error", "", "no such file"]
        if extra:  # coat-0017 (0.51) has no label over 0.6; its best guesses are still in the row
            assert records[1]["label"] is None and rows[1][1] == "none of these"
            assert rows[1][3].startswith(f"{records[1]['top_k'][0]['label']} ")


def test_installed_command_draws_the_same_rows_in_a_fresh_process(tmp_path):
    """Through the console script (stdout a pipe: as wide as the rows need), a path too long for any
    terminal stays whole in its cell."""
    long_name = tmp_path / ("x" * 150 + ".png")
    long_name.write_bytes((EXAMPLES / "dress-0033.png").read_bytes())
    inputs = [str(EXAMPLES / "dress-0033.png"), str(long_name)]
    done = subprocess.run([ZEROSHOT, "classify", *inputs, *FASHION, "-f", "table"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    records = records_of(invoke("classify", *inputs, *FASHION).stdout)
    rows = assert_table_is(done.stdout, records)
    assert rows[0][1:] == rows[1][1:] and rows[1][0] == str(long_name)  # the same pixels, the same row
