"""The decoding workers (forked processes) when the run is stopped: SIGTERM to the process group,
as ``timeout`` and service managers send it, ends the run with the parent's one line; the
workers go quietly."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from zeroshot.model.models import BUNDLED_NAME

from .videos import EXAMPLES, make_video

ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))
MODEL = ["-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-q", "-k", "1"]


def test_sigterm_to_the_process_group_prints_the_parents_line_only(tmp_path):
    """Images and a video's frames, decoded in two worker processes, stopped once records are on
    disk: stderr is the one "terminated; N records kept" line, the exit code 143."""
    clip = tmp_path / "clip.mp4"
    make_video(clip, [(p, 0.5) for p in sorted(EXAMPLES.glob("*.png"))[:8]], fps=25)
    pictures = [str(p) for p in sorted(EXAMPLES.glob("*.png"))] * 40
    out = tmp_path / "out.jsonl"
    side = tmp_path / "out.jsonl.partial"
    proc = subprocess.Popen([ZEROSHOT, "classify", str(clip), *pictures, *MODEL, "--every", "0.04", "--workers", "2",
                             "-o", str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (side.exists() and side.stat().st_size > 0) and proc.poll() is None:
            assert time.monotonic() < deadline, "no record written in 2 minutes"
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be stopped"
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = err.decode()
    kept = sum(1 for _ in side.open())
    assert kept > 0
    assert err == (f"zeroshot: error: terminated; {kept:,} records kept in {side}: run the same command with "
                   "--resume to go on\n")  # fmt: skip
    assert proc.returncode == 143
    time.sleep(0.5)
    assert [pid for pid in workers if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"] == []


def _children(pid: int) -> list[int]:
    """The processes ``pid``'s threads forked (the pool is started from whichever thread decodes)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in task.read_text().split()]
    return sorted(found)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"
