"""Videos named by URL: the body goes to a temporary file a block at a time (memory does not grow
with the video), within ``--max-video-bytes``, the timeouts and the deadline; the copies are gone
when the run ends."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from zeroshot.model.models import BUNDLED_NAME

from .videos import EXAMPLES, make_video

ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))
MODEL = ["-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-q", "-k", "3"]
PADDING = 256 * 1024 * 1024  # a trailing MP4 "free" box: bytes to download that FFmpeg never reads
CAP = 200_000


class Handler(http.server.BaseHTTPRequestHandler):
    clip: bytes = b""

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        with contextlib.suppress(OSError):  # the client hangs up on what it refuses
            self.answer()

    def answer(self) -> None:
        if self.path == "/clip.mp4":
            self.head(len(self.clip))
            self.wfile.write(self.clip)
        elif self.path == "/padded.mp4":  # the clip, then 256 MB of padding, sent a block at a time
            self.head(len(self.clip) + PADDING)
            self.wfile.write(self.clip + struct.pack(">I4s", PADDING, b"free"))
            block = bytes(1 << 20)
            left = PADDING - 8
            while left:
                self.wfile.write(block[:left])
                left -= min(left, len(block))
        elif self.path == "/declared.mp4":  # an honest Content-Length over the cap
            self.head(10 * CAP)
        elif self.path == "/endless.mp4":  # no Content-Length: the cap must hold while reading
            self.head(None)
            for _ in range(50):
                self.wfile.write(bytes(65536))
        elif self.path == "/stall.mp4":
            self.head(len(self.clip))
            self.wfile.write(self.clip[:100])
            self.wfile.flush()
            time.sleep(3)  # past the client's 1 s timeout

    def head(self, length: int | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    clip = tmp_path_factory.mktemp("served") / "clip.mp4"
    make_video(clip, [(sorted(EXAMPLES.glob("bag-*.png"))[0], 1.0), (sorted(EXAMPLES.glob("coat-*.png"))[0], 1.0)])
    Handler.clip = clip.read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def classify(tmp_path: Path, *args: str) -> tuple[int, list[dict], str, int]:
    """A run with a temporary folder of its own: (exit code, records, stderr, its peak memory in kB)."""
    temp = Path(tempfile.mkdtemp(dir=tmp_path))
    env = {**os.environ, "TMPDIR": str(temp)}
    out, err = tmp_path / f"{temp.name}.out", tmp_path / f"{temp.name}.err"
    peak = 0
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([ZEROSHOT, "classify", *args, *MODEL], stdout=o, stderr=e, env=env)
        while proc.poll() is None:
            peak = max(peak, _high_water(proc.pid))
            time.sleep(0.01)
    assert list(temp.iterdir()) == []  # the downloads are gone
    return proc.returncode, [json.loads(line) for line in out.read_text().splitlines()], err.read_text(), peak


def _high_water(pid: int) -> int:
    """The process's VmHWM in kB (downloads and planning run in the parent: no worker is involved)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("VmHWM:")), 0)


def test_a_video_url_is_streamed_to_disk_not_held_in_memory(server, tmp_path):
    """256 MB more to download costs no more memory: the records are the clip's, the peak within
    32 MB of the clip's own run (holding the body, then joining it, would add 512 MB)."""
    code, plain, err, plain_peak = classify(tmp_path, f"{server}/clip.mp4")
    assert code == 0 and len(plain) == 2, err
    code, padded, err, padded_peak = classify(tmp_path, f"{server}/padded.mp4")
    assert code == 0, err
    assert [{**r, "path": ""} for r in padded] == [{**r, "path": ""} for r in plain]
    assert padded_peak - plain_peak < 32 * 1024, (plain_peak, padded_peak)


def test_video_urls_keep_the_cap_the_timeouts_and_one_record_each(server, tmp_path):
    names = ["declared.mp4", "endless.mp4", "stall.mp4", "clip.mp4"]
    code, records, err, _ = classify(tmp_path, *(f"{server}/{n}" for n in names), "--timeout", "1",
                                     "--max-video-bytes", str(CAP))  # fmt: skip
    assert code == 1, err
    assert [r["path"] for r in records] == [f"{server}/{n}" for n in names[:3]] + [f"{server}/clip.mp4"] * 2
    assert [r.get("error") for r in records] == [
        f"too large: {10 * CAP:,} bytes, over the --max-video-bytes limit of {CAP:,}",
        f"too large: more than the --max-video-bytes limit of {CAP:,} bytes",
        "timed out after 1 s",
        None,
        None,
    ]
