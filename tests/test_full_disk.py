"""A disk that fills up under ``-o FILE`` or stdout: one line on stderr, exit 1, the old FILE as it
was, no temporary file, and the whole batches written before it filled kept for ``--resume``.

Runs everywhere, as root or not, with no mount: the child gets RLIMIT_FSIZE, so a write past the
limit fails (EFBIG) as it would on a full disk (ENOSPC): the same ``OSError`` on the same calls
(the side file's appends, the temporary file's writes), whatever the file system. ``/dev/full``
gives the real ENOSPC for a stream destination and for stdout."""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from zeroshot.model.models import BUNDLED_NAME

from .conftest import invoke

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"
ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))  # the installed console script
# -k 10: records of ~700 bytes, so that a batch of 8 outweighs the side file's mark (~1.3 KB)
FASHION = ["-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-k", "10", "-q", "--no-cache", "--workers", "0"]
OLD = b'{"path": "from an earlier run", "label": "kept"}\n'


def capped(limit: int, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed command with files capped at ``limit`` bytes (SIGXFSZ is ignored by Python, so
    a write past it fails with EFBIG instead of killing the process)."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([ZEROSHOT, "classify", str(EXAMPLES), *FASHION, *args], cwd=cwd, env=env, preexec_fn=cap,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def one_error_line(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert done.stderr.startswith("zeroshot: error: ") and done.stderr.count("\n") == 1, done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)
    return done.stderr


@pytest.fixture
def here(tmp_path) -> Path:
    """An empty folder of the test's own (the cache folder is beside it)."""
    folder = tmp_path / "here"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("fills", ["the first batch", "the first mark"])
def test_a_full_disk_under_output_fails_in_one_line_and_keeps_the_old_file(fills, here):
    """Nothing was kept, so the line promises nothing: the disk filled under the first batch of 40
    records (~28 KB), or under the mark that would have counted the first batch of one (the record
    fits, its mark of ~1.2 KB does not: a side file with no mark could never be resumed)."""
    out = here / "out.jsonl"
    out.write_bytes(OLD)
    if fills == "the first batch":
        done = capped(1024, "-o", str(out), "-b", "64", cwd=here)
    else:
        first = invoke("classify", EXAMPLES / "ankle-boot-0000.png", *FASHION).stdout.encode()
        done = capped(len(first) + 100, "-o", str(out), "-b", "1", cwd=here)
    line = one_error_line(done, f"--output {out}", os.strerror(errno.EFBIG))
    assert "kept" not in line and "--resume" not in line
    assert out.read_bytes() == OLD
    assert sorted(p.name for p in here.iterdir()) == ["out.jsonl"]  # no side file, no temporary file


def test_whole_batches_written_before_the_disk_filled_are_kept_for_resume(here):
    want = [json.loads(line) for line in invoke("classify", EXAMPLES, *FASHION).stdout.splitlines()]
    lines = [len(json.dumps(r, ensure_ascii=False).encode()) + 1 for r in want]
    one, two = sum(lines[:8]), sum(lines[:16])
    assert one > 3000  # the mark fits under the limit; the second batch does not
    out = here / "out.jsonl"
    out.write_bytes(OLD)
    done = capped((one + two) // 2, "-o", str(out), "-b", "8", cwd=here)
    one_error_line(done, f"--output {out}", os.strerror(errno.EFBIG), "8 records kept in", "--resume")
    assert out.read_bytes() == OLD
    assert sorted(p.name for p in here.iterdir()) == ["out.jsonl", "out.jsonl.partial", "out.jsonl.partial.json"]
    resumed = subprocess.run([ZEROSHOT, "classify", str(EXAMPLES), *FASHION, "-o", str(out), "-b", "8", "--resume"],
                             cwd=here, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line) for line in out.read_text().splitlines()] == want
    assert sorted(p.name for p in here.iterdir()) == ["out.jsonl", "out.jsonl.manifest.json"]
    assert json.loads((here / "out.jsonl.manifest.json").read_text())["records"] == len(want) == 40


def test_records_into_a_full_device_or_a_full_stdout_fail_in_one_line(here):
    """ENOSPC itself: ``-o /dev/full`` (a device: written in place) and ``> /dev/full``."""
    args = [ZEROSHOT, "classify", str(EXAMPLES), *FASHION]
    device = subprocess.run([*args, "-o", "/dev/full"], cwd=here, capture_output=True, text=True, timeout=300)
    one_error_line(device, "--output /dev/full", os.strerror(errno.ENOSPC))
    with open("/dev/full", "w") as full:
        shell = subprocess.run(args, cwd=here, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert shell.returncode == 1 and shell.stderr.count("\n") == 1, shell.stderr
    assert shell.stderr.startswith("zeroshot: error: ") and os.strerror(errno.ENOSPC) in shell.stderr
    assert list(here.iterdir()) == []
