"""The server's guards in-process: a small FastAPI app with ``limits.install`` under a real uvicorn
on a free loopback port (raw sockets where the point is what is sent, or not sent, on the wire),
and ``metrics.Metrics`` rendered and parsed."""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import StreamingResponse  # noqa: E402

from tests.serving import free_port, request  # noqa: E402
from zeroshot.serve import limits, metrics  # noqa: E402

CAP = 1000
KEY = "s3cret-key"
GOOD_ORIGIN = "http://good.example"


class Seen:
    """What the app's handlers saw (written from the server thread, read by the tests)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.bodies: list[int] = []  # bytes each /echo handler got before it returned or failed
        self.release = threading.Event()
        self.metrics = metrics.Metrics()


def make_app(seen: Seen, **guard) -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        seen.calls.append("echo")
        got = 0
        try:
            async for chunk in request.stream():
                got += len(chunk)
        finally:
            seen.bodies.append(got)
        return {"bytes": got}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    @app.get("/secret")
    async def secret() -> dict:
        seen.calls.append("secret")
        return {"secret": 42}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict:
        return {"item": item_id}

    @app.get("/typed")
    async def typed(n: int) -> dict:
        return {"n": n}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("internal detail /etc/shadow\nsecond line")

    @app.get("/refuse")
    async def refuse() -> dict:
        raise limits.queue_full(32)

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def lines():
            yield b"first\n"
            # The second line waits until the client has read the first: a guard that buffered
            # the answer would hold the first line back, and the client's read would time out.
            await asyncio.to_thread(seen.release.wait, 10)
            yield b"second\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    limits.install(app, **guard)
    metrics.install(app, seen.metrics)
    return app


class Uvicorn:
    """``app`` served by uvicorn on a thread, on a free 127.0.0.1 port; every wait bounded."""

    def __init__(self, app: FastAPI) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def keyed() -> Iterator[tuple[Uvicorn, Seen]]:
    """An app with an API key, a body cap of ``CAP`` bytes, one CORS origin, 1 s for a body."""
    seen = Seen()
    server = Uvicorn(make_app(seen, api_key=KEY, max_body_bytes=CAP, cors_origins=[GOOD_ORIGIN], body_timeout=1.0))
    yield server, seen
    server.stop()


@pytest.fixture(scope="module")
def open_app() -> Iterator[tuple[Uvicorn, Seen]]:
    """An app with no key, no CORS origin, and uploads of at most ``2 * CAP`` bytes in flight."""
    seen = Seen()
    server = Uvicorn(make_app(seen, api_key=None, max_body_bytes=CAP, cors_origins=[], max_inflight_bytes=2 * CAP))
    yield server, seen
    server.stop()


AUTH = {"Authorization": f"Bearer {KEY}"}


def raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is on a new connection and read one whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_answer(sock, timeout)


def read_answer(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One whole answer (with a Content-Length) from ``sock``: (status, headers, body)."""
    answer = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in answer or not _complete(answer):
        assert time.monotonic() < deadline, f"no whole answer within {timeout} s: {answer!r}"
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    match = re.search(rb"(?i)content-length:\s*(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


def one_line_error(body: bytes) -> str:
    """The ``{"error": ...}`` answer's message, checked to be the only key and one line."""
    answer = json.loads(body)
    assert set(answer) == {"error"}, answer
    message = answer["error"]
    assert isinstance(message, str) and message and "\n" not in message, message
    assert "Traceback" not in message and 'File "' not in message, message
    return message


def chunked(total: int, piece: int = 300) -> bytes:
    out = b""
    left = total
    while left:
        n = min(piece, left)
        out += f"{n:x}\r\n".encode() + b"x" * n + b"\r\n"
        left -= n
    return out + b"0\r\n\r\n"


def post_head(path: str, extra: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n{extra}\r\n").encode()


# --- the body cap ---------------------------------------------------------------------------------


def test_declared_body_over_the_cap_is_refused_before_the_body_is_read(keyed):
    server, seen = keyed
    calls = len(seen.calls)
    # Only the head is sent: the answer can only come from the Content-Length, since not one byte
    # of the 10 MB body exists. The app's handler never runs.
    status, headers, body = raw(server.port, post_head("/echo", "Content-Length: 10000000\r\n"), timeout=5)
    assert status == 413
    assert one_line_error(body) == f"request body over the cap of {CAP} bytes (--max-body-bytes {CAP})"
    assert headers.get("connection") == "close"
    assert len(seen.calls) == calls


def test_declared_body_one_byte_over_the_cap_is_refused(keyed):
    server, seen = keyed
    calls = len(seen.calls)
    status, _, body = raw(server.port, post_head("/echo", f"Content-Length: {CAP + 1}\r\n") + b"x" * (CAP + 1))
    assert status == 413, body
    assert len(seen.calls) == calls


def test_body_exactly_at_the_cap_is_accepted(keyed):
    server, seen = keyed
    status, _, body = raw(server.port, post_head("/echo", f"Content-Length: {CAP}\r\n") + b"x" * CAP)
    assert status == 200, body
    assert json.loads(body) == {"bytes": CAP}
    status, _, body = raw(server.port, post_head("/echo", "Transfer-Encoding: chunked\r\n") + chunked(CAP))
    assert status == 200, body
    assert json.loads(body) == {"bytes": CAP}


def test_chunked_body_over_the_cap_is_cut_off_with_413(keyed):
    server, seen = keyed
    before = len(seen.bodies)
    status, _, body = raw(server.port, post_head("/echo", "Transfer-Encoding: chunked\r\n") + chunked(3 * CAP))
    assert status == 413, body
    assert one_line_error(body).startswith("request body over the cap")
    # The handler started, got at most the cap, and its own failure answer (FastAPI would make it
    # a 400) never reached the client after the 413.
    deadline = time.monotonic() + 5
    while len(seen.bodies) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(seen.bodies) == before + 1
    assert seen.bodies[-1] <= CAP


def test_body_that_trickles_past_the_body_timeout_is_408(keyed):
    server, seen = keyed
    before = len(seen.bodies)
    start = time.monotonic()
    status, _, body = raw(server.port, post_head("/echo", "Content-Length: 500\r\n") + b"x" * 10, timeout=5)
    took = time.monotonic() - start
    assert status == 408
    assert one_line_error(body) == "request body not received within 1 s"
    assert 0.9 <= took < 3, took
    deadline = time.monotonic() + 5
    while len(seen.bodies) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen.bodies[before:] == [10]


def test_cap_applies_with_no_key_configured(open_app):
    server, seen = open_app
    status, _, body = request("POST", server.url + "/echo", b"x" * (CAP + 1), timeout=10)
    assert status == 413
    status, _, body = request("POST", server.url + "/echo", b"x" * CAP, timeout=10)
    assert (status, json.loads(body)) == (200, {"bytes": CAP})


def test_uploads_in_flight_share_a_budget(open_app):
    server, seen = open_app
    calls = len(seen.calls)
    head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {CAP}\r\n\r\n".encode()
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
    try:
        for sock in held:  # two uploads of CAP bytes each, half sent: the budget of 2 * CAP is spent
            sock.sendall(head + b"x" * (CAP // 2))
        deadline = time.monotonic() + 5
        while len(seen.calls) < calls + 2:
            assert time.monotonic() < deadline, "the held uploads never reached the app"
            time.sleep(0.01)
        status, head_in, body = request("POST", server.url + "/echo", b"x" * 10, timeout=10)
        assert status == 429
        assert head_in.get("retry-after") == "1"
        assert one_line_error(body) == "server busy: too many uploads in flight; retry later"
        assert request("GET", server.url + "/secret", timeout=10)[0] == 200  # no body: nothing to hold
        for sock in held:
            sock.sendall(b"x" * (CAP - CAP // 2))
            status, _, body = read_answer(sock)
            assert (status, json.loads(body)) == (200, {"bytes": CAP})
    finally:
        for sock in held:
            sock.close()
    status, _, body = request("POST", server.url + "/echo", b"x" * 10, timeout=10)
    assert (status, json.loads(body)) == (200, {"bytes": 10})


# --- the API key ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, why",
    [
        ({}, "missing API key"),
        ({"Authorization": "Bearer wrong-key"}, "wrong API key"),
        ({"Authorization": f"Bearer {KEY}x"}, "wrong API key"),
        ({"Authorization": f"Bearer {KEY[:-1]}"}, "wrong API key"),
        ({"Authorization": f"Basic {KEY}"}, "wrong API key"),
        ({"Authorization": KEY}, "wrong API key"),
        ({"Authorization": "Bearer "}, "wrong API key"),
    ],
)
def test_missing_or_wrong_key_is_401(keyed, headers, why):
    server, seen = keyed
    calls = len(seen.calls)
    status, head, body = request("GET", server.url + "/secret", headers=headers, timeout=10)
    assert status == 401
    assert head.get("www-authenticate") == "Bearer"
    assert one_line_error(body) == f"{why}: send Authorization: Bearer KEY"
    assert len(seen.calls) == calls


def test_right_key_is_let_in_and_scheme_case_does_not_matter(keyed):
    server, _ = keyed
    for scheme in ("Bearer", "bearer", "BEARER"):
        status, _, body = request("GET", server.url + "/secret", headers={"Authorization": f"{scheme} {KEY}"})
        assert (status, json.loads(body)) == (200, {"secret": 42})


def test_key_is_checked_before_the_body_cap(keyed):
    server, seen = keyed
    calls = len(seen.calls)
    head = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n\r\n"
    status, _, body = raw(server.port, head, timeout=5)
    assert status == 401
    assert len(seen.calls) == calls


def test_only_the_open_paths_are_open(keyed):
    server, _ = keyed
    assert request("GET", server.url + "/healthz")[0] == 200
    assert request("GET", server.url + "/readyz?probe=1")[0] == 200
    # The page's path is open by default (a browser navigating to it sends no key); this app has no
    # page, so it is a 404, not a 401.
    assert request("GET", server.url + "/")[0] == 404
    # Near misses of an open path are not open.
    for path in ("/healthz/", "/healthz/../secret", "//healthz", "/HEALTHZ", "/index.html", "/docs", "/metrics"):
        assert request("GET", server.url + path)[0] == 401, path
    status, _, body = request("GET", server.url + "/nope", headers=AUTH)
    assert (status, one_line_error(body)) == (404, "Not Found")


def test_no_key_configured_leaves_everything_open(open_app):
    server, _ = open_app
    status, _, body = request("GET", server.url + "/secret")
    assert (status, json.loads(body)) == (200, {"secret": 42})


# --- CORS -----------------------------------------------------------------------------------------


def test_cors_headers_only_for_the_configured_origin(keyed):
    server, _ = keyed
    _, head, _ = request("GET", server.url + "/secret", headers={**AUTH, "Origin": GOOD_ORIGIN})
    assert head.get("access-control-allow-origin") == GOOD_ORIGIN
    _, head, _ = request("GET", server.url + "/secret", headers={**AUTH, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in head
    # A refusal from the guard carries them too, so the page can read its message.
    status, head, _ = request("GET", server.url + "/secret", headers={"Origin": GOOD_ORIGIN})
    assert status == 401 and head.get("access-control-allow-origin") == GOOD_ORIGIN
    # A preflight carries no key: it is answered, for the configured origin only.
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    status, head, _ = request("OPTIONS", server.url + "/echo", headers={**preflight, "Origin": GOOD_ORIGIN})
    assert status == 200 and head.get("access-control-allow-origin") == GOOD_ORIGIN
    assert "authorization" in head.get("access-control-allow-headers", "").lower()
    status, head, _ = request("OPTIONS", server.url + "/echo", headers={**preflight, "Origin": "http://evil.example"})
    assert status == 400 and "access-control-allow-origin" not in head


def test_no_cors_headers_without_configured_origins(open_app):
    server, _ = open_app
    _, head, _ = request("GET", server.url + "/secret", headers={"Origin": GOOD_ORIGIN})
    assert not [k for k in head if k.startswith("access-control-")]
    preflight = {"Origin": GOOD_ORIGIN, "Access-Control-Request-Method": "POST"}
    status, head, _ = request("OPTIONS", server.url + "/echo", headers=preflight)
    assert status == 405 and not [k for k in head if k.startswith("access-control-")]


# --- errors as one line ---------------------------------------------------------------------------


def test_validation_error_is_400_with_one_line(open_app):
    server, _ = open_app
    status, _, body = request("GET", server.url + "/typed?n=abc")
    assert status == 400
    message = one_line_error(body)
    assert message.startswith("bad request: n: ") and "integer" in message, message


def test_unexpected_exception_is_500_with_one_line_and_no_detail(open_app):
    server, _ = open_app
    status, _, body = request("GET", server.url + "/boom")
    assert status == 500
    assert one_line_error(body) == "internal server error (RuntimeError); see the server's log"
    assert b"/etc/shadow" not in body
    # The server carries on.
    assert request("GET", server.url + "/healthz")[0] == 200


def test_refusal_keeps_its_status_and_headers(open_app):
    server, _ = open_app
    status, head, body = request("GET", server.url + "/refuse")
    assert status == 429
    assert head.get("retry-after") == "1"
    assert one_line_error(body) == "server busy: 32 images already queued (--max-queue 32); retry later"


def test_refusal_helpers_say_what_and_which_knob():
    assert (limits.timed_out(60).status, limits.timed_out(60).message) == (
        504,
        "request timed out after 60 s (--timeout 60)",
    )
    too_many = limits.too_many_images(65, 64)
    assert (too_many.status, too_many.message) == (413, "request has 65 images, over the cap of 64 (--max-images 64)")
    assert limits.Refusal(400, "two\nlines").message == "two lines"


def test_streamed_answer_passes_the_guard_unbuffered(keyed):
    server, seen = keyed
    seen.release.clear()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"GET /stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
        got = b""
        while b"first" not in got:
            chunk = sock.recv(4096)  # times out (fails) if the guard held the first line back
            assert chunk, got
            got += chunk
        assert b"second" not in got
        seen.release.set()
        while b"second" not in got:
            chunk = sock.recv(4096)
            assert chunk, got
            got += chunk


# --- metrics --------------------------------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """Prometheus text 0.0.4: (each family's TYPE, each sample as (name, labels, value)); fails on
    any line that is not a comment or a well-formed sample."""
    types: dict[str, str] = {}
    samples = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        value = float(match.group(3).replace("+Inf", "inf"))
        samples.append((match.group(1), labels, value))
    return types, samples


def values(samples, name, **labels) -> list[float]:
    return [v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items())]


def test_metrics_render_parses_and_counts():
    m = metrics.Metrics()
    for seconds in (0.001, 0.02, 0.2, 3.0, 100.0):
        m.request("/v1/classify", 200, seconds)
    m.request("/v1/classify", 429, 0.001)
    m.request("/healthz", 200, 0.0001)
    for size in (1, 3, 32, 300):
        m.batch(size)
    m.queue_depth(7)
    m.images(50)
    m.images(30)
    m.text_cache(True)
    m.text_cache(True)
    m.text_cache(False)
    m.text_build()
    types, samples = parse(m.render())
    assert types == {
        "zeroshot_requests_total": "counter",
        "zeroshot_request_seconds": "histogram",
        "zeroshot_batch_size": "histogram",
        "zeroshot_queue_depth": "gauge",
        "zeroshot_images_total": "counter",
        "zeroshot_images_per_second": "gauge",
        "zeroshot_text_cache_hits_total": "counter",
        "zeroshot_text_cache_misses_total": "counter",
        "zeroshot_text_builds_total": "counter",
    }
    assert values(samples, "zeroshot_requests_total", route="/v1/classify", status="200") == [5]
    assert values(samples, "zeroshot_requests_total", route="/v1/classify", status="429") == [1]
    assert values(samples, "zeroshot_requests_total", route="/healthz", status="200") == [1]
    assert values(samples, "zeroshot_queue_depth") == [7]
    assert values(samples, "zeroshot_images_total") == [80]
    assert values(samples, "zeroshot_images_per_second") == [pytest.approx(8.0)]
    assert values(samples, "zeroshot_text_cache_hits_total") == [2]
    assert values(samples, "zeroshot_text_cache_misses_total") == [1]
    assert values(samples, "zeroshot_text_builds_total") == [1]

    seconds = {
        lab["le"]: v
        for n, lab, v in samples
        if n == "zeroshot_request_seconds_bucket" and lab["route"] == "/v1/classify"
    }
    assert seconds == {
        "0.005": 2, "0.01": 2, "0.025": 3, "0.05": 3, "0.1": 3, "0.25": 4, "0.5": 4,
        "1": 4, "2.5": 4, "5": 5, "10": 5, "30": 5, "+Inf": 6,
    }  # fmt: skip
    assert values(samples, "zeroshot_request_seconds_count", route="/v1/classify") == [6]
    assert values(samples, "zeroshot_request_seconds_sum", route="/v1/classify") == [pytest.approx(103.222)]
    batch = {lab["le"]: v for n, lab, v in samples if n == "zeroshot_batch_size_bucket"}
    assert batch == {"1": 1, "2": 1, "4": 2, "8": 2, "16": 2, "32": 3, "64": 3, "128": 3, "256": 3, "+Inf": 4}
    assert values(samples, "zeroshot_batch_size_count") == [4]
    assert values(samples, "zeroshot_batch_size_sum") == [336]


def test_histogram_buckets_are_cumulative_with_inf_equal_to_count():
    import random

    m = metrics.Metrics()
    rng = random.Random(5)
    for _ in range(500):
        m.request("/v1/classify", 200, rng.expovariate(2.0))
        m.batch(rng.randint(1, 400))
    _, samples = parse(m.render())
    for name, labels in (("zeroshot_request_seconds", {"route": "/v1/classify"}), ("zeroshot_batch_size", {})):
        buckets = [(lab["le"], v) for n, lab, v in samples if n == f"{name}_bucket" and labels.items() <= lab.items()]
        bounds = [float(le.replace("+Inf", "inf")) for le, _ in buckets]
        counts = [v for _, v in buckets]
        assert bounds == sorted(bounds) and bounds[-1] == math.inf
        assert counts == sorted(counts)
        assert counts[-1] == values(samples, f"{name}_count", **labels)[0] == 500


def test_metrics_are_thread_safe():
    m = metrics.Metrics()

    def work() -> None:
        for _ in range(2000):
            m.request("/v1/classify", 200, 0.01)
            m.images(1)
            m.text_cache(True)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    renders = 0
    while any(t.is_alive() for t in threads):
        parse(m.render())  # rendering while others write never breaks the text
        renders += 1
    for t in threads:
        t.join(30)
    _, samples = parse(m.render())
    assert values(samples, "zeroshot_requests_total", route="/v1/classify", status="200") == [16000]
    assert values(samples, "zeroshot_request_seconds_count", route="/v1/classify") == [16000]
    assert values(samples, "zeroshot_images_total") == [16000]
    assert values(samples, "zeroshot_text_cache_hits_total") == [16000]


def test_route_labels_stay_bounded_and_escaped():
    m = metrics.Metrics()
    for i in range(metrics.MAX_ROUTES + 50):
        m.request(f"/made/up/{i}", 404, 0.001)
    m.request('/we"ird\\route\n', 200, 0.001)
    _, samples = parse(m.render())
    routes = {lab["route"] for n, lab, _ in samples if n == "zeroshot_requests_total"}
    assert len(routes) == metrics.MAX_ROUTES + 1
    assert "other" in routes
    assert values(samples, "zeroshot_requests_total", route="other", status="404") == [50]
    assert values(samples, "zeroshot_requests_total", route="other", status="200") == [1]


def test_route_of_gives_the_template_not_the_path():
    class Route:
        path = "/v1/items/{item_id}"

    assert metrics.route_of({"path": "/v1/items/123", "route": Route()}) == "/v1/items/{item_id}"
    assert metrics.route_of({"path": "/random/path/999"}) == "unmatched"


def test_images_per_second_counts_only_the_last_ten_seconds(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: now[0])
    m = metrics.Metrics()
    m.images(100)
    now[0] += 5
    m.images(20)
    _, samples = parse(m.render())
    assert values(samples, "zeroshot_images_per_second") == [pytest.approx(12.0)]
    now[0] += 6  # the first 100 are now 11 s old
    _, samples = parse(m.render())
    assert values(samples, "zeroshot_images_per_second") == [pytest.approx(2.0)]
    assert values(samples, "zeroshot_images_total") == [120]


def test_request_timer_counts_templates_and_the_guards_answers(open_app):
    server, seen = open_app
    before = parse(seen.metrics.render())[1]
    for i in range(3):
        assert request("GET", server.url + f"/items/{i}")[0] == 200
    assert request("GET", server.url + "/items/abc")[0] == 400
    assert request("GET", server.url + "/no/such/path/42")[0] == 404
    assert request("POST", server.url + "/echo", b"x" * (CAP + 1))[0] == 413
    # A request is counted when the app returns, a moment after its answer reached the client.
    deadline = time.monotonic() + 5
    while True:
        _, after = parse(seen.metrics.render())
        counted = sum(values(after, "zeroshot_requests_total")) - sum(values(before, "zeroshot_requests_total"))
        if counted >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.01)

    def grew(**labels) -> float:
        return sum(values(after, "zeroshot_requests_total", **labels)) - sum(
            values(before, "zeroshot_requests_total", **labels)
        )

    assert grew(route="/items/{item_id}", status="200") == 3
    assert grew(route="/items/{item_id}", status="400") == 1
    assert grew(route="unmatched", status="404") == 1
    assert grew(route="unmatched", status="413") == 1  # refused before routing: no template yet
    routes = {lab["route"] for n, lab, _ in after if n == "zeroshot_requests_total"}
    assert not [r for r in routes if any(ch.isdigit() for ch in r)], routes


def test_websocket_without_the_key_is_closed_before_the_app_sees_it():
    reached: list[dict] = []
    sent: list[dict] = []

    async def app(scope, receive, send):
        reached.append(scope)

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "websocket.connect"}

    guard = limits.Guard(app, api_key=KEY, max_body_bytes=CAP, open_paths=limits.OPEN_PATHS)
    scope = {"type": "websocket", "path": "/ws", "headers": []}
    asyncio.run(guard(scope, receive, send))
    assert (reached, sent) == ([], [{"type": "websocket.close", "code": 1008}])
    asyncio.run(guard({**scope, "headers": [(b"authorization", f"Bearer {KEY}".encode())]}, receive, send))
    assert len(reached) == 1
