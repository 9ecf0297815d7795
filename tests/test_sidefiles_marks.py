"""What ``--resume`` (and a run without it) does with what it finds beside FILE: a side file whose
mark is missing or unreadable is refused, never truncated; a finished FILE is resumed only by the
command that made it; the mark never counts bytes that are not on disk yet."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from zeroshot.model.models import BUNDLED_NAME

from .conftest import EXAMPLES, SIDE_FASHION, ZEROSHOT

FASHION = SIDE_FASHION


def classify(*args: object, cwd: Path, inputs: object = EXAMPLES) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ZEROSHOT, "classify", str(inputs), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


CASES = [("jsonl", "missing", True), ("jsonl", "unreadable", False), ("csv", "missing", False),
         ("csv", "unreadable", True)]  # fmt: skip


@pytest.mark.parametrize(("fmt", "mark", "resume"), CASES)
def test_a_side_file_without_a_readable_mark_is_refused_with_what_it_holds(fmt, mark, resume, work):
    whole = classify(*FASHION, "-f", fmt, "-o", f"whole.{fmt}", cwd=work)
    assert whole.returncode == 0, whole.stderr
    lines = (work / f"whole.{fmt}").read_bytes().splitlines(keepends=True)
    kept = b"".join(lines[: 17 + (fmt == "csv")])  # 17 records (and CSV's header)
    side, meta = work / f"out.{fmt}.partial", work / f"out.{fmt}.partial.json"
    side.write_bytes(kept)
    if mark == "unreadable":
        meta.write_bytes(b'{"format": "zeroshot partial output", "records": 1')  # cut short
    done = classify(*FASHION, "-f", fmt, "-o", f"out.{fmt}", *(["--resume"] if resume else []), cwd=work)
    assert done.returncode == 2
    assert done.stderr == (
        f"zeroshot: error: out.{fmt}.partial holds {len(kept):,} bytes (17 records) but its mark "
        f"out.{fmt}.partial.json is {mark}, so nothing says which command made them or where they end: "
        f"{'delete both' if mark == 'unreadable' else 'delete it'} to start over\n"
    )
    assert side.read_bytes() == kept  # nothing truncated, nothing overwritten
    assert (meta.read_bytes() if mark == "unreadable" else None) == (
        b'{"format": "zeroshot partial output", "records": 1' if mark == "unreadable" else None
    )
    assert not (work / f"out.{fmt}").exists()


def test_resume_of_a_finished_file_by_another_command_is_refused_naming_the_change(work):
    first = classify(*FASHION, "-k", "5", "-o", "d.jsonl", cwd=work)
    assert first.returncode == 0, first.stderr
    made = (work / "d.jsonl").read_bytes()
    assert made.count(b"\n") == 40
    fewer = classify(*FASHION, "-k", "2", "-o", "d.jsonl", "--resume", cwd=work)
    assert fewer.returncode == 2
    assert fewer.stderr == ("zeroshot: error: --resume: d.jsonl was made with other --top-k (5, now 2): "
                            "run it as it was, or leave out --resume to replace it\n")  # fmt: skip
    one = EXAMPLES / "bag-0018.png"
    other = classify("-m", BUNDLED_NAME, "--label", "shoe", "--label", "shirt", "-q", "-b", "8", "--workers", "0",
                     "-k", "5", "-o", "d.jsonl", "--resume", cwd=work, inputs=one)  # fmt: skip
    assert other.returncode == 2
    assert other.stderr == ("zeroshot: error: --resume: d.jsonl was made with other inputs on the command line and "
                            "labels, prompts or text classifier: run it as it was, or leave out --resume to replace "
                            "it\n")  # fmt: skip
    assert (work / "d.jsonl").read_bytes() == made  # 40 records, not 1
    same = classify(*FASHION, "-k", "5", "-o", "d.jsonl", "--resume", cwd=work)
    assert same.returncode == 0
    assert same.stderr == "zeroshot: note: d.jsonl is complete (40 records): nothing to resume\n"
    manifest = json.loads((work / "d.jsonl.manifest.json").read_text())
    assert manifest["run_key"]["top_k"] == 5 and manifest["run_key"]["format"] == "jsonl"


@pytest.mark.parametrize("manifest", ["missing", "unreadable"])
def test_resume_of_a_file_whose_manifest_says_nothing_is_refused(manifest, work):
    (work / "d.jsonl").write_bytes(b"my own notes\n")  # not a zeroshot run's records at all
    if manifest == "unreadable":
        (work / "d.jsonl.manifest.json").write_bytes(b"{not json")
    done = classify(*FASHION, "-o", "d.jsonl", "--resume", cwd=work)
    assert done.returncode == 2
    assert done.stderr == (
        f"zeroshot: error: --resume: d.jsonl is there but its manifest d.jsonl.manifest.json is {manifest}, "
        "so nothing says which command made it: leave out --resume to replace it\n"
    )
    assert (work / "d.jsonl").read_bytes() == b"my own notes\n"


def test_the_mark_counts_only_bytes_already_on_disk(work, monkeypatch):
    """Each batch: the side file's bytes reach the disk, then the mark that counts them is written to
    a temporary file of its own (a fresh name, created exclusively), synced, and renamed into place."""
    from zeroshot.base.files import destination
    from zeroshot.uses import resume

    events: list[tuple[str, ...]] = []

    def name(fd: int) -> str:
        return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))

    for sync in ("fsync", "fdatasync"):
        real = getattr(os, sync)
        monkeypatch.setattr(os, sync, lambda fd, real=real: (events.append(("sync", name(fd))), real(fd))[1])
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", Path(a).name, Path(b).name)),
                                                     real_replace(a, b))[1])  # fmt: skip
    part = resume.PartialOutput(destination("--output", work / "out.jsonl"), {"top_k": 1}, resume=False,
                                fmt="jsonl")  # fmt: skip
    events.clear()
    part.append_batch(b'{"path": "a.png"}\n', ["a.png"])
    assert len(events) == 3, events
    tmp = events[1][1]
    assert tmp.startswith(".out.jsonl.partial.json.") and tmp.endswith(".tmp") and tmp != "out.jsonl.partial.json.tmp"
    assert events == [("sync", "out.jsonl.partial"), ("sync", tmp), ("rename", tmp, "out.jsonl.partial.json")]
    assert json.loads((work / "out.jsonl.partial.json").read_text())["bytes"] == 18
    part.keep()
