"""Inputs that must never hang a run or eat the machine, and inputs people really have.

Special files, endless devices, sparse giants and files over ``--max-bytes``; workers that die with
their parent; NUL-separated paths; HEIC/AVIF; URLs; a cache that cannot be written. The model is
the bundled fashion-mini (fast) unless the numbers need a 224-pixel model.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zeroshot.base import cache
from zeroshot.image.reading import fetch_url, read_file
from zeroshot.model.models import BUNDLED_NAME

from .conftest import ARCH, invoke, make_image

LABELS = ["t-shirt", "trouser", "bag", "sneaker"]
MODEL = ["--model", BUNDLED_NAME] + [a for label in LABELS for a in ("--label", label)]
CAP = 200_000  # --max-bytes for these runs: above every good image here, below the "over" file


def records_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture()
def hostile(tmp_path):
    """Good images mixed with a FIFO, a socket, an endless device, a sparse 6 GB file and a file over
    the cap, each named directly and inside a folder. Returns (folder, direct paths, {path: error})."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    goods = [make_image(folder / f"good{i}.png", i, (60 + 10 * i, 50)) for i in range(3)]
    os.mkfifo(folder / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock.png"))
    (folder / "zero.jpg").symlink_to("/dev/zero")
    with open(folder / "sparse.jpg", "wb") as f:
        f.truncate(6 * 1024**3)  # a hole: takes no disk, claims 6 GB
    over = folder / "over.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(over)
    assert over.stat().st_size > CAP
    errors = {
        "pipe.jpg": "not a regular file: a FIFO",
        "sock.png": "not a regular file: a socket",
        "zero.jpg": "not a regular file: a character device",
        "sparse.jpg": f"too large: {6 * 1024**3:,} bytes, over the --max-bytes limit of {CAP:,}",
        "over.png": f"too large: {over.stat().st_size:,} bytes, over the --max-bytes limit of {CAP:,}",
    }
    yield folder, goods, errors
    sock.close()


def test_special_files_and_giants_get_error_records_at_once(hostile, tmp_path):
    folder, goods, errors = hostile
    direct = [str(folder / name) for name in errors] + ["/dev/zero"]
    via_stdin = [str(folder / name) for name in reversed(list(errors))] + [str(goods[0])]
    args = [sys.executable, "-m", "zeroshot", "classify", *direct, str(goods[1]), str(folder), "-", *MODEL,
            "--max-bytes", str(CAP), "-k", "2", "--workers", "1"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate("\n".join(via_stdin).encode(), timeout=120)
    assert proc.returncode == 1, err.decode()
    assert b"Traceback" not in err and len(err.splitlines()) == 1
    records = records_of(out.decode())
    in_folder = sorted(str(p) for p in folder.iterdir())
    expected = [*direct, str(goods[1]), *in_folder, *via_stdin]
    assert [r["path"] for r in records] == expected  # one record per input, in order
    for r in records:
        name = Path(r["path"]).name
        if r["path"] == "/dev/zero":
            assert r["error"] == "not a regular file: a character device"
        elif name in errors:
            assert r["error"] == errors[name], r
        else:
            assert "error" not in r, r
    # The good ones are classified as when alone.
    alone = invoke("classify", *[str(g) for g in goods], *MODEL, "-k", "2")
    by_path = {r["path"]: r for r in records_of(alone.stdout)}
    for r in records:
        if "error" not in r:
            want = by_path[r["path"]]
            assert r["label"] == want["label"] and abs(r["score"] - want["score"]) < 1e-6
    assert time.perf_counter() - start < 60  # nothing waited on a FIFO or read 6 GB


def test_error_records_come_within_a_second(hostile):
    """The special files alone (no model work between them): every record within a second of the first."""
    folder, _, errors = hostile
    args = [sys.executable, "-m", "zeroshot", "classify", *[str(folder / n) for n in errors], "/dev/zero",
            *MODEL, "--max-bytes", str(CAP), "-q"]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    stamps = []
    for line in proc.stdout:
        stamps.append((time.perf_counter(), json.loads(line)))
    proc.wait(timeout=60)
    assert len(stamps) == len(errors) + 1 and all("error" in r for _, r in stamps)
    assert stamps[-1][0] - stamps[0][0] < 1.0


def test_reading_is_capped_while_reading_and_never_blocks(tmp_path):
    fifo = tmp_path / "late.jpg"
    os.mkfifo(fifo)
    with pytest.raises(Exception, match="not a regular file: a FIFO"):
        read_file(str(fifo))  # opened non-blocking and refused on fstat, even when named directly
    grows = tmp_path / "grows.png"
    grows.write_bytes(b"x" * 10)
    with pytest.raises(Exception, match="too large"):
        read_file(str(grows), max_bytes=5)
    # /proc files claim size 0 and have more: the cap holds while reading, not only on the size.
    with pytest.raises(Exception, match="more than the max_bytes limit of 16"):  # the library's words
        read_file("/proc/self/status", max_bytes=16)
    assert read_file("/proc/self/status", max_bytes=0).startswith(b"Name:")


def test_eval_and_image_cache_hashing_skip_special_files(hostile, tmp_path):
    folder, goods, errors = hostile
    root = tmp_path / "labelled"
    (root / "bag").mkdir(parents=True)
    for g in goods:
        (root / "bag" / g.name).write_bytes(g.read_bytes())
    os.mkfifo(root / "bag" / "pipe.png")
    (root / "bag" / "zero.png").symlink_to("/dev/zero")
    (root / "bag" / "over.png").write_bytes((folder / "over.png").read_bytes())
    result = invoke("eval", root, *MODEL, "--max-bytes", CAP, "-q")
    assert result.exit_code == 1
    rec = json.loads(result.stdout)
    assert rec["images"] == 3
    got = {Path(e["path"]).name: e["error"] for e in rec["errors"]}
    assert got["pipe.png"] == "not a regular file: a FIFO"
    assert got["zero.png"] == "not a regular file: a character device"
    assert got["over.png"].startswith("too large")
    cached = invoke("classify", folder, *MODEL, "--max-bytes", CAP, "--cache-images", "-q")
    again = invoke("classify", folder, *MODEL, "--max-bytes", CAP, "--cache-images", "-q")
    assert cached.exit_code == again.exit_code == 1
    assert records_of(cached.stdout) == records_of(again.stdout)


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = {int(k) for k in (task / "children").read_text().split()}
                found |= kids
                todo.extend(kids)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc to find the workers")
def test_workers_die_with_a_killed_parent(tmp_path):
    good = make_image(tmp_path / "a.png", 1, (40, 40))
    args = [sys.executable, "-m", "zeroshot", "classify", "-", *MODEL, "-q", "--workers", "2"]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:  # feed paths until the pool is up
        proc.stdin.write(f"{good}\n".encode())
        proc.stdin.flush()
        time.sleep(0.2)
        workers = descendants(proc.pid)
    assert len(workers) >= 2, "the decoding workers never started"
    proc.kill()  # SIGKILL: no cleanup code runs in the parent
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [w for w in workers if alive(w)]
    for w in left:
        with contextlib.suppress(OSError):
            os.kill(w, signal.SIGKILL)
    assert not left, "decoding workers outlived their killed parent"


def test_null_separated_paths_from_find(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    names = ["new\nline.png", "tab\there.png", "quote\"s 'both'.png", "back\\slash.png", " lead.png", "plain.png"]
    for i, name in enumerate(names):
        make_image(folder / name, i, (40, 40))
    listing = subprocess.run(["find", str(folder), "-type", "f", "-print0"], capture_output=True, check=True).stdout
    result = invoke("classify", "-0", "-", *MODEL, "-k", "1", input=listing)
    assert result.exit_code == 0, result.output
    records = records_of(result.stdout)
    assert sorted(r["path"] for r in records) == sorted(str(folder / n) for n in names)
    assert all(r["label"] in LABELS for r in records)
    # Without -0 the same bytes are split on the newline: the two halves are "no such file".
    lines = invoke("classify", "-", *MODEL, "-k", "1", input=listing.replace(b"\0", b"\n"))
    assert lines.exit_code == 1
    split = {r["path"]: r for r in records_of(lines.stdout)}
    assert split[str(folder / "new")] == {"path": str(folder / "new"), "error": "no such file"}
    assert split["line.png"] == {"path": "line.png", "error": "no such file"}
    assert len(split) == len(names) + 1 and sum("error" in r for r in split.values()) == 2


def test_heic_and_avif_match_the_same_pixels_as_png(checkpoint, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is a dependency: reinstall zeroshot")
    yy, xx = np.mgrid[0:64, 0:96]  # smooth, so lossy coding keeps it close; asymmetric, so turns show
    src = np.stack([xx * 2.6, yy * 3.9, (xx + yy) * 1.5], axis=-1).clip(0, 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise
    pairs = []
    for fmt, ext, kw in [("HEIF", "heic", {"quality": 95}), ("AVIF", "avif", {"quality": 95})]:
        for rotated in (False, True):
            path = tmp_path / f"{'rot' if rotated else 'up'}.{ext}"
            extra = {"exif": exif.tobytes()} if rotated else {}
            if fmt == "HEIF":
                pillow_heif.from_pillow(Image.fromarray(src)).save(path, **kw, **extra)
                ref = np.asarray(pillow_heif.open_heif(path, convert_hdr_to_8bit=True))  # libheif, no Pillow
            else:
                Image.fromarray(src).save(path, format="AVIF", **kw, **extra)
                with Image.open(path) as im:
                    ref = np.asarray(im.convert("RGB"))
                ref = np.rot90(ref, -1) if rotated else ref  # orientation 6 applied by hand
            want = np.rot90(src, -1) if rotated else src
            err = np.abs(ref.astype(int) - want).mean()  # lossy, but this image, this way up:
            assert ref.shape == want.shape and err < 4 and err < np.abs(ref.astype(int) - want[::-1, ::-1]).mean() / 4
            png = tmp_path / f"{path.stem}-{ext}.png"
            Image.fromarray(np.ascontiguousarray(ref)).save(png)
            pairs.append((path, png))
    result = invoke("classify", *[p for pair in pairs for p in pair], "-m", ARCH, "-p", checkpoint,
                    "--label", "cat", "--label", "dog", "--label", "car", "-k", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    recs = {r["path"]: r for r in records_of(result.stdout)}
    for image, png in pairs:
        a, b = recs[str(image)], recs[str(png)]
        got = {t["label"]: t["score"] for t in a["top_k"]}
        for t in b["top_k"]:
            assert abs(got[t["label"]] - t["score"]) < 1e-5, image.name


class Handler(http.server.BaseHTTPRequestHandler):
    image: bytes = b""

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        path = self.path
        if path == "/good.png":
            self._send(200, "image/png", self.image)
        elif path == "/missing.png":
            self._send(404, "text/html", b"<html>not found</html>")
        elif path == "/stall.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(self.image[:100])
            self.wfile.flush()
            time.sleep(3)  # past the client's 1 s timeout, then give up
        elif path == "/big.png":  # no Content-Length: the cap must hold while reading
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(50):
                    self.wfile.write(b"\0" * 65536)
        elif path == "/bigger.png":  # an honest Content-Length over the cap
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(10 * CAP))
            self.end_headers()
        elif path.startswith("/loop"):
            self.send_response(302)
            self.send_header("Location", "/loop-b" if path == "/loop-a" else "/loop-a")
            self.end_headers()
        elif path == "/page.png":
            self._send(200, "text/html; charset=utf-8", b"<!doctype html><html><body>hi</body></html>")
        else:
            self._send(404, "text/plain", b"no")

    def _send(self, code, ctype, body):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server(tmp_path):
    good = make_image(tmp_path / "served.png", 7, (64, 48))
    Handler.image = good.read_bytes()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", good
    httpd.shutdown()
    httpd.server_close()


def test_urls_one_record_each_in_order(server):
    base, good = server
    names = ["good.png", "missing.png", "stall.png", "big.png", "bigger.png", "loop-a", "page.png", "good.png"]
    urls = [f"{base}/{n}" for n in names]
    start = time.perf_counter()
    result = invoke("classify", *urls, str(good), *MODEL, "-k", "2", "--timeout", "1", "--max-bytes", CAP)
    took = time.perf_counter() - start
    assert result.exit_code == 1
    records = records_of(result.stdout)
    assert [r["path"] for r in records] == [*urls, str(good)]
    errors = [r.get("error") for r in records]
    assert errors[0] is None and errors[-2] is None and errors[-1] is None
    assert errors[1] == "HTTP error 404 (Not Found)"
    assert errors[2] == "timed out after 1 s"
    assert errors[3] == f"too large: more than the --max-bytes limit of {CAP:,} bytes"
    assert errors[4] == f"too large: {10 * CAP:,} bytes, over the --max-bytes limit of {CAP:,}"
    assert errors[5].startswith("too many redirects")
    assert errors[6] == "not an image (the server sent text/html)"
    assert records[0]["label"] == records[-1]["label"] and abs(records[0]["score"] - records[-1]["score"]) < 1e-6
    assert took < 30


def test_fetch_refuses_redirects_off_http(server):
    base, _ = server
    with pytest.raises(Exception, match="HTTP error 404"):
        fetch_url(f"{base}/nothing", timeout=2)
    data = fetch_url(f"{base}/good.png", timeout=2)
    assert Image.open(io.BytesIO(data)).size == (64, 48)


@pytest.fixture()
def fresh_warning(monkeypatch):
    monkeypatch.setattr(cache, "_warned_unwritable", set())


def _mount_tmpfs(path: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder nobody can write to: a read-only tmpfs as root (root ignores modes), else mode 0555."""
    path.mkdir()
    mounted = _mount_tmpfs(path, "ro,size=1m")
    if not mounted:
        path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)
        else:
            path.chmod(0o755)


def run_with_cache(folder: Path, images: list[Path], monkeypatch) -> tuple[int, list[dict], str]:
    monkeypatch.setenv("ZEROSHOT_CACHE_DIR", str(folder))
    result = invoke("classify", *images, *MODEL, "-k", "2", "--cache-images")
    return result.exit_code, records_of(result.stdout), result.stderr


def test_read_only_cache_folder_still_classifies(tmp_path, image_dir, monkeypatch, fresh_warning):
    images = sorted(image_dir.iterdir())
    want = records_of(invoke("classify", *images, *MODEL, "-k", "2").stdout)
    with read_only_folder(tmp_path / "ro") as folder:
        code, records, err = run_with_cache(folder / "cache", images, monkeypatch)
        assert not any(folder.iterdir())
    assert code == 0 and records == want
    warnings = [line for line in err.splitlines() if "warning" in line]
    # one line for each kind it could not store, saying what that costs
    assert [w.split(" cannot be cached: ")[0] for w in warnings] == [
        "zeroshot: warning: the text classifier",
        "zeroshot: warning: image embeddings",
    ], err
    assert all("cannot write to the cache folder" in w for w in warnings), err


def test_read_only_cache_keeps_the_cpu_engine_for_the_run(tmp_path, image_dir, monkeypatch, fresh_warning):
    """With ONNX Runtime, an unwritable cache costs the next run the export, not this run its engine
    (made outside the cache, held in memory): the records are the writable cache's, one warning."""
    monkeypatch.setenv("ZEROSHOT_RUNTIME", "onnx")
    images = sorted(image_dir.iterdir())
    want = records_of(invoke("classify", *images, *MODEL, "-k", "2").stdout)
    with read_only_folder(tmp_path / "ro") as folder:
        code, records, err = run_with_cache(folder / "cache", images, monkeypatch)
        assert not any(folder.iterdir())
    assert code == 0 and records == want, err
    assert "runs on torch" not in err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert sorted(w.split(" cannot be cached: ")[0] for w in warnings) == [
        "zeroshot: warning: image embeddings",
        "zeroshot: warning: the CPU engine's export",
        "zeroshot: warning: the text classifier",
    ], err
    assert all("cannot write to the cache folder" in w for w in warnings), err


def test_full_disk_cache_still_classifies_and_leaves_nothing_half_written(image_dir):
    """The cache's disk fills up: the run's records are those of a run without a cache, with a
    warning line; what the cache held stays byte for byte, nothing temporary or half-written is left,
    and the next run, with room again, fills the cache and gives the same records.

    A full disk without root or a mount, so that this runs everywhere (as root or not): the child's
    RLIMIT_FSIZE makes every write past 1 KiB fail (EFBIG; Python ignores SIGXFSZ), on the same calls
    that ENOSPC fails on a full disk: the cache's temporary files, the image cache's database."""
    import resource

    images = [str(p) for p in sorted(image_dir.iterdir())]
    folder = Path(os.environ["ZEROSHOT_CACHE_DIR"])  # this test's own (conftest)
    seeded = invoke("classify", *images, *MODEL, "-k", "2")  # the text classifier of MODEL, cached
    assert seeded.exit_code == 0, seeded.output
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert [p.suffix for p in before].count(".safetensors") == 1
    more = [*MODEL, "--label", "dress", "-k", "2"]  # another classifier, to be written into the full cache
    want = records_of(invoke("classify", *images, *more, "--no-cache").stdout)
    args = [sys.executable, "-m", "zeroshot", "classify", *images, *more, "--cache-images"]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")

    def full() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    capped = subprocess.run(args, capture_output=True, text=True, env=env, preexec_fn=full, timeout=300)
    assert capped.returncode == 0, capped.stderr
    assert records_of(capped.stdout) == want
    # One line for the cache (or one per kind of entry, text and images), never one per file.
    warned = capped.stderr.splitlines()
    assert 1 <= len(warned) <= 2 and len(set(warned)) == len(warned), capped.stderr
    assert all(w.startswith("zeroshot: warning: ") and "cannot write to the cache" in w for w in warned), warned
    assert {p: p.read_bytes() for p in before} == before
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]
    assert [e.problem for e in cache.list_entries()] == [None]  # the old entry, whole; no half-written one
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and again.stderr == "" and records_of(again.stdout) == want, again.stderr
    assert [e.problem for e in cache.list_entries()] == [None, None]
    assert len(list(folder.glob(f"{cache.IMAGE_SUBDIR}/*.sqlite"))) == 1  # and the image embeddings
