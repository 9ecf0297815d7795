"""``-o FILE``'s side files (FILE.partial, FILE.partial.json) and their temporaries are made by the
run itself: a symlink, a FIFO or a hard-linked file sitting where one goes is refused in one line,
and whatever it leads to stays byte for byte as it was. Run through the installed console script."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import EXAMPLES, SIDE_FASHION, ZEROSHOT

FASHION = [*SIDE_FASHION, "-k", "2"]


def classify(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ZEROSHOT, "classify", str(EXAMPLES), *FASHION, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("dangling", [False, True])
@pytest.mark.parametrize("side", ["out.jsonl.partial", "out.jsonl.partial.json"])
def test_a_symlink_where_a_side_file_goes_is_refused_and_never_followed(side, dangling, resume, work):
    victim = work / "victim.txt"
    if not dangling:
        victim.write_bytes(b"precious\n")
    (work / side).symlink_to("victim.txt")
    done = classify("-o", "out.jsonl", *(["--resume"] if resume else []), cwd=work)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"zeroshot: error: {side} is a symlink where this run keeps its side file: "
                           "move it away (what it points to is left alone), or give another --output\n")  # fmt: skip
    assert os.readlink(work / side) == "victim.txt"  # the link stays as it was
    if dangling:
        assert not victim.exists()  # never created through the link
    else:
        assert victim.read_bytes() == b"precious\n"
    assert sorted(p.name for p in work.iterdir()) == sorted([side, *([] if dangling else ["victim.txt"])])


def test_a_fifo_or_a_hard_link_where_the_side_file_goes_is_refused(work):
    os.mkfifo(work / "out.jsonl.partial")  # opened to test a lock, it would wait for a writer forever
    done = classify("-o", "out.jsonl", cwd=work)
    assert done.returncode == 2
    assert done.stderr.startswith("zeroshot: error: out.jsonl.partial is a FIFO where this run keeps its side file")
    (work / "out.jsonl.partial").unlink()
    victim = work / "victim.txt"
    victim.write_bytes(b"")
    os.link(victim, work / "out.jsonl.partial")  # empty, so no run's records: another file's name
    done = classify("-o", "out.jsonl", cwd=work)
    assert done.returncode == 2
    assert done.stderr.startswith("zeroshot: error: out.jsonl.partial is a file with other hard links where")
    assert victim.read_bytes() == b"" and not (work / "out.jsonl").exists()


def test_the_marks_temporary_has_a_name_of_its_own(work):
    """The mark is written through a temporary file that the run creates (O_EXCL, a fresh name):
    a symlink named FILE.partial.json.tmp (the name older versions used) is someone else's file."""
    victim = work / "victim.txt"
    victim.write_bytes(b"precious\n")
    (work / "out.jsonl.partial.json.tmp").symlink_to("victim.txt")
    done = classify("-o", "out.jsonl", cwd=work)
    assert done.returncode == 0, done.stderr
    assert victim.read_bytes() == b"precious\n"
    assert os.readlink(work / "out.jsonl.partial.json.tmp") == "victim.txt"  # not ours: left there
    assert len((work / "out.jsonl").read_text().splitlines()) == 40
    assert sorted(p.name for p in work.iterdir()) == ["out.jsonl", "out.jsonl.manifest.json",
                                                          "out.jsonl.partial.json.tmp", "victim.txt"]  # fmt: skip


def test_a_symlinked_output_keeps_its_side_files_beside_the_target_and_names_them_as_given(work):
    """``-o link.jsonl`` (a symlink to data/real.jsonl): the records reach the target, the link
    stays, and the side files are the target's (a refusal names where they are)."""
    (work / "data").mkdir()
    (work / "link.jsonl").symlink_to("data/real.jsonl")
    (work / "data" / "real.jsonl.partial").symlink_to("elsewhere")
    refused = classify("-o", "link.jsonl", cwd=work)
    side = work / "data" / "real.jsonl.partial"
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"zeroshot: error: {side} is a symlink"), refused.stderr
    (work / "data" / "real.jsonl.partial").unlink()
    done = classify("-o", "link.jsonl", cwd=work)
    assert done.returncode == 0, done.stderr
    assert os.readlink(work / "link.jsonl") == "data/real.jsonl"
    assert len((work / "data" / "real.jsonl").read_text().splitlines()) == 40
