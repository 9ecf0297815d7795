"""What ``classify`` says and writes around its records: the format a known ``-o`` extension asks
for, exit 141 for every format when the reader goes away, and an error summary that counts what it
names. Run through the installed console script."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from zeroshot.model.models import BUNDLED_NAME

from .conftest import EXAMPLES, SIDE_FASHION, ZEROSHOT

FASHION = [*SIDE_FASHION, "-k", "2"]


def classify(*args: object, cwd: Path, inputs: list[object] | None = None) -> subprocess.CompletedProcess[str]:
    given = [str(i) for i in (inputs or [EXAMPLES])]
    return subprocess.run([ZEROSHOT, "classify", *given, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_a_known_extension_chooses_the_format_and_a_disagreeing_format_is_named(work):
    names = ("out.csv", "out.json", "out.ndjson", "out.JSONL", "out.txt")
    with ThreadPoolExecutor(2) as pool:  # independent runs, mostly interpreter start-up: two at a time
        runs = list(pool.map(lambda name: classify(*FASHION, "-o", name, cwd=work), names))
    for name, done in zip(names, runs, strict=True):
        assert done.returncode == 0 and done.stderr == "", (name, done.stderr)
    rows = list(csv.DictReader(io.StringIO((work / "out.csv").read_text())))
    assert len(rows) == 40 and rows[0]["path"].endswith(".png") and json.loads(rows[0]["top_k"])
    array = json.loads((work / "out.json").read_text())
    assert [r["path"] for r in array] == [r["path"] for r in rows]
    for name in ("out.ndjson", "out.JSONL", "out.txt"):  # JSON Lines: named so, or the default
        assert [json.loads(line) for line in (work / name).read_text().splitlines()] == array
    manifest = json.loads((work / "out.csv.manifest.json").read_text())
    assert manifest["output_format"] == "csv" and manifest["run_key"]["format"] == "csv"
    told = classify(*FASHION, "-f", "csv", "-o", "told.jsonl", cwd=work)
    assert told.returncode == 0
    assert told.stderr == "zeroshot: note: writing csv to told.jsonl as --format asks (its extension says jsonl)\n"
    assert (work / "told.jsonl").read_text() == (work / "out.csv").read_text()
    parquet = classify(*FASHION, "-o", "out.parquet", cwd=work)
    assert parquet.returncode == 2
    assert parquet.stderr == (
        "zeroshot: error: --output out.parquet: Parquet needs --engine ray (the local engine writes "
        "jsonl, json, csv or table: give --format to write one of them there)\n"
    )
    assert not (work / "out.parquet").exists()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json", "table"])
def test_every_format_exits_141_when_the_reader_goes_away(fmt, work):
    """``| head -n 1``: the reader takes one line and leaves. The records are more than a pipe holds
    (long paths), so the run is still writing then, in one piece (a table) or record by record;
    unbuffered stdout (PYTHONUNBUFFERED=1) included, where one write can take only part of them."""
    deep = work.joinpath(*["d" * 200] * 6)
    deep.mkdir(parents=True)
    for p in sorted(EXAMPLES.glob("*.png")):
        for copy in range(4):  # 160 rows of over 1,200 bytes: well past a pipe's 64 KiB
            shutil.copyfile(p, deep / f"{copy}-{p.name}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([ZEROSHOT, "classify", str(deep), *FASHION, "-f", fmt], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141, err
    assert first and err == b""


def test_the_error_summary_counts_inputs_not_records(work):
    """Six inputs, three of them failing: a video of three sampled frames, a video that cannot be
    read, two images and two files that are no images. The summary counts six inputs, not 8 records."""
    from .videos import make_video

    folder = work / "in"
    folder.mkdir()
    pics = sorted(EXAMPLES.glob("*.png"))
    make_video(folder / "clip.mp4", [(pics[0], 2.5)])
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    for i in range(2):
        shutil.copyfile(pics[i + 1], folder / f"good-{i}.png")
        (folder / f"bad-{i}.png").write_bytes(b"not an image")
    args = ["-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "--workers", "0"]
    done = classify(*args, cwd=work, inputs=[folder])
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(records) == 8 and sum("error" in r for r in records) == 3
    assert done.returncode == 1
    assert done.stderr == "zeroshot: 3 of 6 inputs could not be classified\n"
    kept = classify(*args, "-o", "out.jsonl", cwd=work, inputs=[folder])  # the same through a side file
    assert kept.returncode == 1 and kept.stderr == "zeroshot: 3 of 6 inputs could not be classified\n"


def test_the_tally_counts_inputs_and_video_frames_apart():
    from zeroshot.uses.output import Tally

    tally = Tally()
    for record in [{"path": "a.png", "label": "x"}, {"path": "b.png", "error": "no"},
                   {"path": "w.mp4", "error": "not a video"}, {"path": "v.mp4", "time": 0.0, "label": "x"},
                   {"path": "v.mp4", "time": 1.0, "error": "bad"}, {"path": "v.mp4", "time": 2.0, "label": "x"},
                   {"path": "v.mp4", "time": 0.0, "label": "x"}]:  # fmt: skip
        tally.add(record)
    assert (tally.inputs, tally.failed, tally.frames, tally.failed_frames) == (5, 2, 4, 1)  # v.mp4 named twice
    assert tally.line() == "2 of 5 inputs and 1 of 4 video frames could not be classified"
    again = Tally.from_dict(json.loads(json.dumps(tally.to_dict())))
    again.add({"path": "v.mp4", "time": 1.0, "label": "x"})  # the same video goes on after a resume
    assert (again.inputs, again.frames) == (5, 5)
    assert Tally(inputs=3, frames=9, failed_frames=2).line() == "2 of 9 video frames could not be classified"
