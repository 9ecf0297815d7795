"""``zeroshot serve`` under load, against the CLI's own batch throughput, in one run on this machine.

A random-weights ViT-B-32 (the real architecture: speed does not depend on the weights' values) on
the default engine for the device (the CPU engine, ONNX Runtime, here), photo-sized JPEGs made here,
the cifar10 pack's ten classes and their templates:

- the bare image tower: ONNX Runtime fp32 at batch 1 (what a lone request cannot beat) and batch 32;
- ``zeroshot classify`` over the same JPEGs, images/s from its manifest (ready -> end: decoding and
  the model, not start-up), the baseline the server is measured against;
- ``zeroshot serve`` with 1, 8 and 64 concurrent clients, each sending one image per request and the
  next when it is answered: images/s, p50/p99 latency, the batch sizes the server formed (from its
  /metrics histogram), and the ratio to the CLI's throughput;
- a lone request after warm-up: its latency against the bare tower's batch-1 time;
- the server's RSS before and after ``--rss-requests`` requests (8 clients).

Servers listen on 127.0.0.1 only; every request has a timeout and every phase a bounded count.
The CPU's model and flags come first: compare figures only within one run.

    .venv/bin/python benchmarks/serve.py [--images 256] [--requests 512] [--rss-requests 5000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import DEFAULT_WORK, cpu, photo_jpegs, random_checkpoint, table  # noqa: E402

ZEROSHOT = [sys.executable, "-m", "zeroshot"]
ARCH = "ViT-B-32"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multipart(image: bytes, name: str) -> tuple[bytes, str]:
    """One image and the pack's name as a multipart body (made once per image, sent many times)."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="dataset"\r\n\r\ncifar10\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + image
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Server:
    """A ``zeroshot serve`` process on a free loopback port, ready when /readyz says so."""

    def __init__(self, ckpt: Path, env: dict[str, str], extra: list[str]) -> None:
        self.port = free_port()
        cmd = [*ZEROSHOT, "serve", "-m", ARCH, "-p", str(ckpt), "--host", "127.0.0.1", "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: {self.proc.stderr.read()[-3000:]}")  # type: ignore[union-attr]
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("the server was not ready within 300 s")

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def batch_sizes(self) -> dict[str, float]:
        """The batch-size histogram's cumulative buckets and its count and sum, from /metrics."""
        text = self.get("/metrics")[1].decode()
        found = {}
        for line in text.splitlines():
            m = re.match(r'zeroshot_batch_size_(bucket\{le="([^"]+)"\}|count|sum) ([0-9.e+]+)', line)
            if m:
                found[m.group(2) or m.group(1)] = float(m.group(3))
        return found

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def load(port: int, bodies: list[tuple[bytes, str]], clients: int, requests: int) -> dict[str, float]:
    """``clients`` threads, each with its own keep-alive connection, sending one image per request
    until ``requests`` have been sent in all; images/s over the phase and the latencies."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body, ctype = bodies[i % len(bodies)]
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/classify", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                data = r.read()
                ok = r.status == 200 and b'"label"' in data
            except OSError as e:
                ok, data = False, str(e).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            took = time.perf_counter() - t
            with lock:
                latencies.append(took)
                if not ok:
                    failures.append(data[:200].decode(errors="replace"))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    seconds = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} of {requests} requests failed, e.g. {failures[0]}")
    ordered = sorted(latencies)
    return {"rate": requests / seconds, "p50": statistics.median(ordered) * 1000,
            "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000}  # fmt: skip


def bare(ckpt: Path, env: dict[str, str]) -> dict[str, float]:
    """The ONNX Runtime fp32 image tower alone (the export the server and the CLI use), batch 1 and 32."""
    code = f"""
import json, statistics, time
import numpy as np
from zeroshot.model.models import load_model, resolve_spec
from zeroshot.towers.onnxexport import input_shape, tower_for
loaded = load_model(resolve_spec({ARCH!r}, {str(ckpt)!r}))
tower, why = tower_for(loaded, "fp32")
assert tower is not None, why
out = {{}}
for batch, rounds in ((1, 30), (32, 3)):
    x = np.random.default_rng(0).standard_normal((batch, *input_shape(loaded))).astype(np.float32)
    tower.session.run(None, {{tower.input_name: x}})
    times = []
    for _ in range(rounds):
        t = time.perf_counter(); tower.session.run(None, {{tower.input_name: x}}); times.append(time.perf_counter() - t)
    out[str(batch)] = statistics.median(times)
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def cli_rate(ckpt: Path, env: dict[str, str], folder: Path) -> float:
    """``classify`` over the folder, images/s from its manifest (ready -> end)."""
    manifest = folder.parent / "cli.manifest.json"
    cmd = [*ZEROSHOT, "classify", str(folder), "-m", ARCH, "-p", str(ckpt), "--dataset", "cifar10", "-q",
           "-o", str(folder.parent / "cli.jsonl"), "--manifest", str(manifest)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    m = json.loads(manifest.read_text())
    return m["records"] / (m["seconds"]["total"] - m["seconds"]["ready"])


def histogram_between(before: dict[str, float], after: dict[str, float]) -> str:
    """The batch sizes formed between two /metrics reads, as 'size<=N: count' for the non-empty buckets."""
    rows, last = [], 0.0
    for le in sorted((k for k in after if k not in ("count", "sum")), key=lambda k: float(k.replace("+Inf", "inf"))):
        cum = after[le] - before.get(le, 0.0)
        if cum > last:
            rows.append(f"<={le}: {int(cum - last)}")
        last = cum
    n = after.get("count", 0) - before.get("count", 0)
    mean = (after.get("sum", 0) - before.get("sum", 0)) / n if n else 0.0
    return f"mean {mean:.1f}; " + ", ".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="JPEGs in the corpus (640x480)")
    parser.add_argument("--requests", type=int, default=512, help="requests per concurrency level")
    parser.add_argument("--rss-requests", type=int, default=5000, help="requests of the memory phase (0: skip it)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "serve")
    args = parser.parse_args()
    print(cpu(), flush=True)
    work = args.work
    folder = work / "jpegs"
    paths = photo_jpegs(folder, args.images)
    ckpt = random_checkpoint(DEFAULT_WORK)
    env = dict(os.environ, ZEROSHOT_CACHE_DIR=str(work / "cache"))
    env.pop("ZEROSHOT_RUNTIME", None)  # the default engine for the device, as a user gets it
    subprocess.run([*ZEROSHOT, "build-prompts", "-m", ARCH, "-p", str(ckpt), "--dataset", "cifar10", "-q"],
                   env=env, check=True, capture_output=True)  # fmt: skip
    cli_rate(ckpt, env, folder)  # warm-up: exports the image tower into the cache once
    tower = bare(ckpt, env)
    cli = cli_rate(ckpt, env, folder)
    print(f"model {ARCH} (random weights), default engine; bare tower fp32: batch 1 {tower['1'] * 1000:.1f} ms, "
          f"batch 32 {32 / tower['32']:.1f} images/s; CLI classify end to end {cli:.1f} images/s")  # fmt: skip
    bodies = [multipart(p.read_bytes(), p.name) for p in paths]
    server = Server(ckpt, env, [])
    try:
        load(server.port, bodies, 8, 64)  # warm-up
        lone = load(server.port, bodies, 1, 30)
        rows = []
        for clients in (1, 8, 64):
            before = server.batch_sizes()
            got = load(server.port, bodies, clients, args.requests)
            rows.append([str(clients), f"{got['rate']:.1f}", f"{got['rate'] / cli:.2f}", f"{got['p50']:.0f}",
                         f"{got['p99']:.0f}", histogram_between(before, server.batch_sizes())])  # fmt: skip
        print(table(rows, ["clients", "images/s", "x CLI", "p50 ms", "p99 ms", "batch sizes"]))
        print(f"lone request: p50 {lone['p50']:.1f} ms, bare tower batch 1 {tower['1'] * 1000:.1f} ms: "
              f"+{lone['p50'] - tower['1'] * 1000:.1f} ms (goal: +25 ms at most)")  # fmt: skip
        if args.rss_requests:
            rss0 = server.rss_mb()
            load(server.port, bodies, 8, args.rss_requests)
            rss1 = server.rss_mb()
            print(f"RSS over {args.rss_requests:,} requests: {rss0:.0f} MB -> {rss1:.0f} MB ({rss1 - rss0:+.0f} MB; "
                  "goal: under +50 MB)")  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    main()
