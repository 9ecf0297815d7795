"""``zeroshot serve``'s batching, text cache, readiness and graceful stop, through real server
processes (fashion-mini): concurrent requests share model batches, a new label set is built once
however many requests bring it, a client that goes has its images dropped before the tower,
/readyz is 503 until warm, and SIGTERM answers what is in flight and exits 0."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .serving import Server, metric, server_env

REQUESTS = 16


@pytest.fixture(scope="module")
def pictures(fashion_mnist, tmp_path_factory) -> list[Path]:
    from zeroshot.image.idx import load_split

    images, _ = load_split(fashion_mnist, "test")
    folder = tmp_path_factory.mktemp("serve-batching")
    paths = []
    for i in range(REQUESTS):
        paths.append(folder / f"f{i}.png")
        Image.fromarray(images[i * 13]).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = server_env(tmp_path_factory.mktemp("serve-batching-cache"))
    with Server("-m", "fashion-mini", "--max-wait-ms", "200", "--max-batch", "32", env=env) as s:
        yield s


def payload(path: Path, labels: list[str]) -> dict:
    return {"images": [{"data": base64.b64encode(path.read_bytes()).decode(), "name": path.name}], "labels": labels}


def all_at_once(server: Server, bodies: list[dict], timeout: float = 60.0) -> list[tuple[int, object]]:
    """POST every body to /v1/classify from its own thread, released together; (status, answer) each."""
    out: list = [None] * len(bodies)
    gate = threading.Barrier(len(bodies))

    def send(i: int) -> None:
        gate.wait(timeout)
        status, _, answer = server.post_json("/v1/classify", bodies[i], timeout=timeout)
        out[i] = (status, answer)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    assert not any(t.is_alive() for t in threads), "a request never came back"
    return out


def test_concurrent_requests_share_model_batches(server, pictures):
    labels = ["bag", "sneaker", "shirt", "trouser"]
    alone = [server.post_json("/v1/classify", payload(p, labels))[2]["records"][0] for p in pictures[:2]]
    before = server.metrics()
    answers = all_at_once(server, [payload(p, labels) for p in pictures])
    after = server.metrics()
    assert [status for status, _ in answers] == [200] * REQUESTS, answers
    records = [answer["records"] for _, answer in answers]  # type: ignore[index]
    assert [r[0]["path"] for r in records] == [p.name for p in pictures]
    for got, want in zip(records, alone, strict=False):  # a shared batch changes no record
        assert got[0]["label"] == want["label"] and abs(got[0]["score"] - want["score"]) < 1e-6

    def delta(name: str, labels: dict | None = None) -> float:
        return metric(after, name, labels) - metric(before, name, labels)

    batches = delta("zeroshot_batch_size_count")
    assert delta("zeroshot_images_total") == REQUESTS
    assert delta("zeroshot_batch_size_sum") == REQUESTS
    assert 1 <= batches < REQUESTS  # fewer model calls than requests
    assert delta("zeroshot_batch_size_bucket", {"le": "1"}) < batches  # at least one batch held several


def test_a_new_label_set_is_built_once_however_many_ask(server, pictures):
    sets = [["pullover", "coat", "dress"], ["sandal", "ankle boot", "bag", "shirt"]]  # new to this server
    before = server.metrics()
    answers = all_at_once(server, [payload(pictures[i % 4], sets[i % 2]) for i in range(20)])
    after = server.metrics()
    assert [status for status, _ in answers] == [200] * 20, answers
    for i, (_, answer) in enumerate(answers):
        assert {t["label"] for t in answer["records"][0]["top_k"]} == set(sets[i % 2])  # type: ignore[index]
    assert metric(after, "zeroshot_text_builds_total") - metric(before, "zeroshot_text_builds_total") == 2
    # and the next request for either set finds it held
    hits = metric(after, "zeroshot_text_cache_hits_total")
    assert server.post_json("/v1/classify", payload(pictures[0], sets[0]))[0] == 200
    assert metric(server.metrics(), "zeroshot_text_cache_hits_total") == hits + 1
    assert metric(server.metrics(), "zeroshot_text_builds_total") == metric(after, "zeroshot_text_builds_total")


def raw_post(server: Server, body: dict) -> socket.socket:
    """A whole JSON request sent on a socket whose answer nobody will read."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()  # fmt: skip
    sock.sendall(head + data)
    return sock


class HeldImages:
    """A local HTTP server whose answers (a PNG) wait until :meth:`release`: the server's requests
    for them stay in flight, their images admitted and not yet decoded, as long as the test wants."""

    def __init__(self, png: bytes) -> None:
        import http.server

        gate = self.gate = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                gate.wait(30)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def test_ready_when_warm_drops_what_clients_leave_and_drains_on_sigterm(pictures, tmp_path_factory):
    env = server_env(tmp_path_factory.mktemp("serve-stop-cache"))
    labels = ["bag", "coat"]
    held = HeldImages(pictures[5].read_bytes())
    args = ["-m", "fashion-mini", "--max-wait-ms", "5000", "--allow-urls", "--allow-private-urls"]
    with Server(*args, env=env, wait_ready=False) as s:
        # ready: 503 (alive, loading) until the first batch has been through the tower, then 200
        seen, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline and 200 not in seen:
            try:
                seen.append(s.get("/readyz", timeout=5)[0])
                assert s.get("/healthz", timeout=5)[0] == 200
            except OSError:
                assert s.proc is not None and s.proc.poll() is None, s.stderr()
            time.sleep(0.05)
        assert seen and seen[0] == 503 and seen[-1] == 200, seen
        assert set(seen) == {503, 200}
        assert "zeroshot: serving fashion-mini" in s.stderr()

        # A lone request does not wait out --max-wait-ms: nothing else is on its way.
        started = time.monotonic()
        assert s.post_json("/v1/classify", payload(pictures[6], labels), timeout=30)[0] == 200
        assert time.monotonic() - started < 2.5

        # A client that goes while its image waits for the batch (held open by another request whose
        # image is still being fetched): its image never reaches the tower, the other's does.
        before = s.metrics()
        other: list = []
        url_body = {"images": [{"url": f"{held.url}/held.png"}], "labels": labels}
        waiting = threading.Thread(target=lambda: other.append(s.post_json("/v1/classify", url_body, timeout=30)))
        waiting.start()
        time.sleep(0.3)  # admitted, its image on its way
        sock = raw_post(s, payload(pictures[0], labels))
        time.sleep(0.5)
        sock.close()
        time.sleep(0.5)  # the server has seen the client go
        held.release()
        waiting.join(30)
        after = s.metrics()
        assert other and other[0][0] == 200 and other[0][2]["records"][0]["path"] == f"{held.url}/held.png"
        assert metric(after, "zeroshot_images_total") == metric(before, "zeroshot_images_total") + 1
        assert metric(after, "zeroshot_batch_size_count") == metric(before, "zeroshot_batch_size_count") + 1
        assert metric(after, "zeroshot_queue_depth") == 0

        # SIGTERM while requests are in flight (their images still being fetched): each is
        # answered, then the process exits 0; a new connection is refused at once meanwhile.
        held.gate.clear()
        out: list = [None] * 4

        def send(i: int) -> None:
            body = {"images": [{"url": f"{held.url}/{i}.png"}], "labels": labels}
            out[i] = s.post_json("/v1/classify", body, timeout=30)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        s.terminate()
        time.sleep(0.3)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", s.port), timeout=5).close()
        assert all(o is None for o in out)  # still in flight when the stop began
        held.release()
        for t in threads:
            t.join(30)
        assert [o[0] for o in out] == [200] * 4, out
        assert [o[2]["records"][0]["path"] for o in out] == [f"{held.url}/{i}.png" for i in range(4)]
        assert s.wait(15) == 0, s.stderr()
        assert "Traceback" not in s.stderr()
    held.close()
    assert np.isfinite([o[2]["records"][0]["score"] for o in out]).all()


def test_text_cache_keeps_the_latest_sets_and_forgets_failures():
    import asyncio

    from zeroshot.serve.textcache import TextCache

    built: list[str] = []

    def build(key: str):
        def run() -> str:
            built.append(key)
            if key == "bad":
                raise ValueError("no such pack")
            time.sleep(0.05)
            return key.upper()

        return run

    async def scenario() -> None:
        cache = TextCache(2)
        assert await asyncio.gather(*(cache.get("a", build("a")) for _ in range(3))) == ["A"] * 3
        assert built == ["a"]  # the others waited for the first one's build
        assert await cache.get("b", build("b")) == "B"
        assert await cache.get("c", build("c")) == "C"  # evicts "a", the least recently used
        assert await cache.get("b", build("b")) == "B" and len(built) == 3
        assert await cache.get("a", build("a")) == "A" and built[3:] == ["a"]
        assert len(cache) == 2 and cache.builds == 4
        for _ in range(2):  # a failed build is not kept: asked again, it is tried again
            with pytest.raises(ValueError, match="no such pack"):
                await cache.get("bad", build("bad"))
        assert built.count("bad") == 2 and len(cache) == 2

    asyncio.run(scenario())
