"""Load and fault tests through a real ``zeroshot serve`` process (fashion-mini, loopback only),
bounded in count and time: a queue of 32 under 300 concurrent requests, hostile uploads, clients
that vanish mid-upload, the API key, and URL inputs refused.

Two servers, one per configuration: ``guarded`` (--api-key, --allow-urls without
--allow-private-urls, a small queue and body cap) holds most tests; ``plain`` (the key from
ZEROSHOT_API_KEY, URLs off) holds the rest."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from PIL import Image  # noqa: E402

from tests.serving import Server, metric, multipart, request, server_env  # noqa: E402

KEY = "faults-key-0123456789"
ENV_KEY = "key-from-the-environment"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_QUEUE = 32
BODY_CAP = 2 * 1024 * 1024
LABELS = [("labels", "shirt"), ("labels", "sneaker"), ("labels", "bag")]


def png(color: tuple[int, int, int] = (200, 30, 30), size: int = 28) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, "PNG")
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def declared_png(width: int, height: int, idat: bytes) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (1-bit grey) over the given IDAT data."""
    head = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + head + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bomb_png() -> bytes:
    """A real decompression bomb: 20000 x 20000 pixels (400 MP; 1.2 GB as RGB) in about 60 KB."""
    row = b"\x00" + b"\x00" * (20000 // 8)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(20000)) + z.flush()
    return declared_png(20000, 20000, data)


def classify_multipart(server: Server, files: list[tuple[str, bytes]], timeout: float = 30.0, **headers: str):
    body, content_type = multipart([*(("image", f) for f in files), *LABELS])
    return request(
        "POST", server.url + "/v1/classify", body, {"Content-Type": content_type, **AUTH, **headers}, timeout=timeout
    )


def one_line_error(body: bytes) -> str:
    answer = json.loads(body)
    assert set(answer) == {"error"}, answer
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"], answer
    return answer["error"]


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants (decode workers hold decoded pixels), in KiB."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue  # a worker that ended meanwhile
    return total


def queue_depth(server: Server) -> float:
    return metric(server.metrics(headers=AUTH), "zeroshot_queue_depth")


def wait_queue_empty(server: Server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while queue_depth(server) != 0:
        assert time.monotonic() < deadline, f"queue depth still {queue_depth(server)} after {timeout} s"
        time.sleep(0.05)


def assert_answers_normally(server: Server) -> None:
    status, _, body = classify_multipart(server, [("after.png", png())], timeout=20)
    assert status == 200, body
    (record,) = json.loads(body)["records"]
    assert record["path"] == "after.png" and record["label"] in ("shirt", "sneaker", "bag")


class Origin:
    """A local HTTP server the URL tests point at: it must never be asked for anything."""

    def __init__(self) -> None:
        origin = self
        self.requests: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                origin.requests.append(self.path)
                self.send_response(302 if self.path.startswith("/redirect") else 200)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[Server]:
    args = ["-m", "fashion-mini", "--max-queue", str(MAX_QUEUE), "--max-body-bytes", str(BODY_CAP),
            "--api-key", KEY, "--allow-urls", "--timeout", "30", "-q"]  # fmt: skip
    with Server(*args, env=server_env(tmp_path_factory.mktemp("faults-cache"))) as server:
        yield server


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Iterator[Server]:
    env = server_env(tmp_path_factory.mktemp("plain-cache"), ZEROSHOT_API_KEY=ENV_KEY)
    with Server("-m", "fashion-mini", "-q", env=env) as server:
        yield server


# --- load --------------------------------------------------------------------------------------


def test_300_concurrent_requests_against_a_queue_of_32_are_all_answered(guarded):
    images = [(f"img-{i}.png", png((i * 40 % 256, 90, 160))) for i in range(8)]
    body, content_type = multipart([*(("image", f) for f in images), *LABELS])
    headers = {"Content-Type": content_type, **AUTH}
    start = threading.Barrier(300, timeout=30)

    def one(_: int) -> tuple[int, dict[str, str], bytes]:
        start.wait()
        # Each request is bounded: a hung one fails here instead of stalling the suite.
        return request("POST", guarded.url + "/v1/classify", body, headers, timeout=60)

    began = time.monotonic()
    with ThreadPoolExecutor(300) as pool:
        answers = list(pool.map(one, range(300), timeout=90))
    took = time.monotonic() - began
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 429}, sorted(set(statuses))
    assert 200 in statuses and 429 in statuses, (statuses.count(200), statuses.count(429))
    for status, head, data in answers:
        if status == 200:
            records = json.loads(data)["records"]
            assert [r["path"] for r in records] == [name for name, _ in images]
            assert all("label" in r for r in records), records
        else:
            assert head.get("retry-after") == "1"
            assert one_line_error(data) == (
                f"server busy: {MAX_QUEUE} images already queued (--max-queue {MAX_QUEUE}); retry later"
            )
    assert took < 60, took
    wait_queue_empty(guarded)
    assert_answers_normally(guarded)


# --- hostile uploads ----------------------------------------------------------------------------


def test_hostile_uploads_are_error_records_and_memory_stays_bounded(guarded):
    assert guarded.proc is not None
    good = png()
    hostile = [
        ("empty.png", b""),
        ("truncated.png", good[: len(good) // 2]),
        ("declared-100k.png", declared_png(100_000, 100_000, zlib.compress(b"\x00" * 12_501 * 4))),
        ("bomb.png", bomb_png()),
        ("not-an-image.png", b"GIF89a? no: just some text pretending\n" * 20),
        ("good.png", good),
    ]
    pid = guarded.proc.pid
    before = rss_kib(pid)
    samples = [before]
    done = threading.Event()

    def sample() -> None:  # the peak while the server decodes, not only after each answer
        while not done.wait(0.01):
            samples.append(rss_kib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        as_json = {
            "images": [{"data": base64.b64encode(data).decode(), "name": name} for name, data in hostile],
            "labels": [label for _, label in LABELS],
        }
        for turn in range(4):  # again and again, as files and as base64: nothing accumulates
            if turn % 2:
                status, _, answer = guarded.post_json("/v1/classify", as_json, headers=AUTH, timeout=30)
                data = json.dumps(answer).encode()
            else:
                status, _, data = classify_multipart(guarded, hostile, timeout=30)
            assert status == 200, data
            records = json.loads(data)["records"]
            assert [r["path"] for r in records] == [name for name, _ in hostile]
            for record in records[:-1]:
                assert set(record) == {"path", "error"}, record
                assert record["error"] and "\n" not in record["error"], record
            assert "label" in records[-1], records[-1]
    finally:
        done.set()
        sampler.join(5)
    assert len(samples) > 3
    peak = max(samples)
    assert peak - before < 200 * 1024, f"RSS grew by {(peak - before) // 1024} MB"  # a decoded bomb: 1.2 GB
    assert_answers_normally(guarded)


def read_until_closed(sock: socket.socket) -> bytes:
    """The whole answer: a 413 closes the connection, and its head and body may come in two packets."""
    got = b""
    with contextlib.suppress(OSError):  # a reset after the answer, when the body was not read
        while chunk := sock.recv(65536):
            got += chunk
    return got


def test_body_over_the_cap_is_413_declared_or_chunked(guarded):
    # Declared: refused from the head alone (no body is ever sent).
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {BODY_CAP * 50}\r\n\r\n".encode()
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"(--max-body-bytes %d)" % BODY_CAP in answer
    # Chunked: cut off once past the cap.
    big = [("big.png", b"\x00" * (BODY_CAP + 1024))]
    body, content_type = multipart([*(("image", f) for f in big), *LABELS])
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = 256 * 1024
    chunks = b"".join(
        f"{len(body[i : i + piece]):x}\r\n".encode() + body[i : i + piece] + b"\r\n" for i in range(0, len(body), piece)
    )
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # the server may stop reading once it has answered
            sock.sendall(head + chunks + b"0\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert_answers_normally(guarded)


def test_more_images_than_max_images_is_413(guarded):
    status, _, data = classify_multipart(guarded, [(f"{i}.png", b"x") for i in range(65)])
    assert status == 413
    assert one_line_error(data) == "request has 65 images, over the cap of 64 (--max-images 64)"


def test_clients_that_vanish_mid_upload_free_their_work(guarded):
    good = png()
    body, content_type = multipart([*(("image", (f"{i}.png", good)) for i in range(16)), *LABELS])
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    answered = classify_requests(guarded)
    for _ in range(5):  # half a body, then gone
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
            sock.sendall(head + body[: len(body) // 2])
    for _ in range(5):  # a whole request, gone before its answer
        with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
            sock.sendall(head + body)
    # Wait until the server has finished with all ten (whatever it answered into the void), then:
    # nothing of theirs is left in the queue, and a request of 16 images (half the queue) fits.
    deadline = time.monotonic() + 20
    while classify_requests(guarded) < answered + 10:
        assert time.monotonic() < deadline, "the server never finished with the vanished clients"
        time.sleep(0.05)
    assert queue_depth(guarded) == 0
    status, _, data = request("POST", guarded.url + "/v1/classify", body, {"Content-Type": content_type, **AUTH})
    assert status == 200, data
    assert len(json.loads(data)["records"]) == 16
    assert_answers_normally(guarded)


def classify_requests(server: Server) -> float:
    """Requests to /v1/classify the server has finished with, whatever their status."""
    return metric(server.metrics(headers=AUTH), "zeroshot_requests_total", {"route": "/v1/classify"})


# --- the API key --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, message",
    [
        ({}, "missing API key: send Authorization: Bearer KEY"),
        ({"Authorization": "Bearer not-the-key"}, "wrong API key: send Authorization: Bearer KEY"),
        ({"Authorization": f"Bearer {KEY[:-1]}"}, "wrong API key: send Authorization: Bearer KEY"),
        ({"Authorization": f"Basic {KEY}"}, "wrong API key: send Authorization: Bearer KEY"),
    ],
)
def test_missing_or_wrong_key_is_401(guarded, headers, message):
    body, content_type = multipart([("image", ("a.png", png())), *LABELS])
    for method, path, data, extra in (
        ("POST", "/v1/classify", body, {"Content-Type": content_type}),
        ("GET", "/v1/models", None, {}),
        ("GET", "/metrics", None, {}),
    ):
        status, head, answer = request(method, guarded.url + path, data, {**extra, **headers}, timeout=10)
        assert status == 401, (path, answer)
        assert head.get("www-authenticate") == "Bearer"
        assert one_line_error(answer) == message


def test_health_and_readiness_are_open_and_the_key_lets_in(guarded):
    assert guarded.get("/healthz")[0] == 200
    assert guarded.get("/readyz")[0] == 200
    assert guarded.get("/v1/models", headers=AUTH)[0] == 200


def test_key_from_the_environment(plain):
    assert plain.get("/v1/models")[0] == 401
    assert plain.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})[0] == 401
    assert plain.get("/v1/models", headers={"Authorization": f"Bearer {ENV_KEY}"})[0] == 200
    assert plain.get("/healthz")[0] == 200


# --- URL inputs ---------------------------------------------------------------------------------


def test_private_and_metadata_urls_are_refused_records(guarded):
    origin = Origin()
    try:
        urls = [
            f"http://127.0.0.1:{origin.port}/cat.jpg",
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            f"http://localhost:{origin.port}/redirect-to-metadata",
            "http://[::ffff:127.0.0.1]/x.jpg",
            "file:///etc/passwd",
        ]
        payload = {"images": [{"url": u} for u in urls], "labels": ["shirt", "bag"]}
        status, _, answer = guarded.post_json("/v1/classify", payload, headers=AUTH, timeout=30)
        assert status == 200, answer
        records = answer["records"]
        assert [r["path"] for r in records] == urls
        hint = "(start the server with --allow-private-urls to allow it)"
        assert records[0] == {"path": urls[0], "error": f"refused: 127.0.0.1 is a loopback address {hint}"}
        assert records[1] == {
            "path": urls[1],
            "error": f"refused: 169.254.169.254 is the cloud metadata address {hint}",
        }
        assert set(records[2]) == {"path", "error"} and records[2]["error"].startswith(
            "refused: localhost resolves to "
        )
        assert records[3]["error"] == f"refused: ::ffff:127.0.0.1 is a loopback address {hint}"
        assert records[4]["error"] == "refused: only http and https URLs are fetched, not file:"
        assert origin.requests == []  # nothing was fetched, not even the first hop
    finally:
        origin.close()


def test_url_inputs_are_400_without_allow_urls(plain):
    payload = {"images": [{"url": "http://127.0.0.1:9/x.jpg"}], "labels": ["shirt", "bag"]}
    status, _, answer = plain.post_json(
        "/v1/classify", payload, headers={"Authorization": f"Bearer {ENV_KEY}"}, timeout=30
    )
    assert status == 400
    assert answer == {"error": "images[0]: URL images are off on this server (start it with --allow-urls)"}
