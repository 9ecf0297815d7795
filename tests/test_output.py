"""--format, --output and --min-score: the same records in every shape, written atomically."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from zeroshot.cli import app
from zeroshot.model.models import BUNDLED_NAME

from .conftest import default_sigint, make_image

BASE = ["--model", BUNDLED_NAME, "--dataset", "fashion-mnist", "-k", "3", "-q"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("out")
    paths = [str(make_image(folder / f"{i}.png", i, (28, 28), mode="L")) for i in range(4)]
    return [*paths, str(folder / "missing.png")]


def run(*args):
    result = CliRunner().invoke(app, ["classify", *args])
    return result


def test_every_format_carries_the_same_records(inputs):
    jsonl = run(*inputs, *BASE)
    assert jsonl.exit_code == 1
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert len(records) == 5 and "error" in records[-1]

    as_json = run(*inputs, *BASE, "--format", "json")
    assert json.loads(as_json.stdout) == records

    rows = list(csv.DictReader(io.StringIO(run(*inputs, *BASE, "-f", "csv").stdout)))
    assert [r["path"] for r in rows] == [r["path"] for r in records]
    for row, rec in zip(rows, records, strict=True):
        if "error" in rec:
            assert row["error"] == rec["error"] and row["label"] == "" and row["top_k"] == ""
        else:
            assert row["label"] == rec["label"] and float(row["score"]) == rec["score"]
            assert json.loads(row["top_k"]) == rec["top_k"]

    table = run(*inputs, *BASE, "--format", "table").stdout
    for rec in records:
        assert os.path.basename(rec["path"]) in table
        assert rec.get("label", "error") in table

    empty = run(*BASE, "--format", "json", inputs[-1])
    assert json.loads(empty.stdout) == [{"path": inputs[-1], "error": "no such file"}]
    assert run(*inputs, *BASE, "--format", "xml").exit_code == 2


def test_min_score_turns_low_confidence_into_null(inputs):
    records = [json.loads(line) for line in run(*inputs, *BASE).stdout.splitlines()]
    scores = sorted(r["score"] for r in records if "error" not in r)
    cut = (scores[1] + scores[2]) / 2  # two images below, two above
    gated = [json.loads(line) for line in run(*inputs, *BASE, "--min-score", str(cut)).stdout.splitlines()]
    for before, after in zip(records, gated, strict=True):
        if "error" in before:
            assert after == before
        elif before["score"] < cut:
            assert after["label"] is None and after["score"] == before["score"] and after["top_k"] == before["top_k"]
        else:
            assert after == before
    assert sum(r.get("label", "x") is None for r in gated) == 2
    assert run(*inputs, *BASE, "--min-score", "1.5").exit_code == 2


def test_output_file_is_written_whole(inputs, tmp_path):
    (tmp_path / "o").mkdir()
    target = tmp_path / "o" / "records.jsonl"
    result = run(*inputs, *BASE, "--output", str(target))
    assert result.stdout == ""
    assert [json.loads(line)["path"] for line in target.read_text().splitlines()] == inputs
    # The records and their manifest, and no temporary file left behind.
    assert sorted(p.name for p in target.parent.iterdir()) == ["records.jsonl", "records.jsonl.manifest.json"]
    assert run(*inputs, *BASE, "-o", str(tmp_path / "no" / "such" / "dir.jsonl")).exit_code == 2
    # The records file is the user's: usual permissions (umask), not the temporary file's 0600.
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_table_prints_markup_in_names_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a short relative path: the table does not wrap it
    make_image(tmp_path / "[red]x [bold].png", 1, (28, 28), mode="L")
    out = run("[red]x [bold].png", *BASE, "-f", "table").stdout
    assert "[red]x [bold].png" in out  # rich would otherwise swallow it as markup


def test_interrupted_run_leaves_no_half_file_and_keeps_its_records_beside_it(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3000):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(folder / f"{i:04d}.png")
    (tmp_path / "o").mkdir()
    target = tmp_path / "o" / "out.csv"
    target.write_text("old contents\n")
    args = [sys.executable, "-m", "zeroshot", "classify", str(folder), *BASE, "-f", "csv", "-o", str(target),
            "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    side = target.with_name("out.csv.partial")
    for _ in range(600):  # wait until records are being written (the side file has grown)
        if side.exists() and side.stat().st_size > 0:
            break
        assert proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert target.read_text() == "old contents\n"  # the old file untouched
    # What was made is kept for --resume (tests/test_resume.py), and nothing else is left.
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.csv", "out.csv.partial", "out.csv.partial.json"]
    assert side.read_text().startswith("path,label,score,error,top_k\n") and "records kept in" in err


def table_of(records, tmp_path, *, width=None, multi_label=False) -> str:
    from zeroshot.base.files import destination
    from zeroshot.uses.output import RecordWriter

    out = tmp_path / f"table-{width}-{multi_label}.txt"
    writer = RecordWriter("table", destination("--output", out), multi_label=multi_label, width=width)
    for record in records:
        writer.write(record)
    writer.close()
    return out.read_text()


def path_cells(table: str) -> str:
    """The path column of a table's body rows, joined: a folded path's pieces make it whole again."""
    return "".join(line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│"))


def test_table_shows_the_best_guess_and_every_path_whole(tmp_path):
    """Under --min-score a record with no label still shows its best guesses; a long path is never
    cut (two files that differ only in their first characters must not look alike)."""
    top = [{"label": "cat", "score": 0.41}, {"label": "dog", "score": 0.32}, {"label": "car", "score": 0.27}]
    deep = "/".join(["photos", "holiday-2025", "x" * 60, "y" * 40, "IMG_0001.jpg"])
    paths = [f"a/{deep}", f"b/{deep}"]
    records = [{"path": p, "label": None, "score": 0.41, "top_k": top} for p in paths]
    for width in (None, 200, 60):
        table = table_of(records, tmp_path, width=width)
        assert "…" not in table and path_cells(table) == "".join(paths), table
        assert "none of these" in table and "cat 0.410" in table, table  # (at 60 columns it wraps after)
        if width is not None:
            assert max(len(line) for line in table.splitlines()) <= width
    assert all(p in table_of(records, tmp_path) for p in paths)  # piped: each on one line
    labelled = table_of([{"path": "x.png", "label": "cat", "score": 0.41, "top_k": top}], tmp_path)
    assert "dog 0.320, car 0.270" in labelled and "cat 0.410" not in labelled  # the label is not repeated
    multi = [{"path": "y.png", "label": None, "score": 0.41, "labels": [], "top_k": top},
             {"path": "z.png", "label": "cat", "score": 0.9, "labels": ["cat"], "top_k": top}]  # fmt: skip
    table = table_of(multi, tmp_path, multi_label=True)
    assert "none over the threshold" in table and "cat 0.410, dog 0.320" in table and "dog 0.320, car 0.270" in table


def test_table_from_the_cli_under_min_score_names_the_best_guess(inputs):
    table = run(*inputs[:2], *BASE, "-f", "table", "--min-score", "1.0").stdout
    assert table.count("none of these") == 2
    records = [json.loads(line) for line in run(*inputs[:2], *BASE).stdout.splitlines()]
    for rec in records:
        best = rec["top_k"][0]
        assert f"{best['label']} {best['score']:.3f}" in table
