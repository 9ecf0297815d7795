"""The server's counters, rendered as Prometheus text (exposition format 0.0.4), by hand.

Invariants: every method is thread-safe (the event loop, the collector thread and decode threads
all report here); a histogram's buckets are cumulative and its ``+Inf`` bucket equals its count;
label values are bounded: the ``route`` label is the route's template (``/v1/classify``), never the
raw URL, and past ``MAX_ROUTES`` distinct routes the rest count as ``other``.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RATE_WINDOW_S = 10.0
MAX_ROUTES = 32


class _Histogram:
    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append(f'{name}_bucket{{{labels}{sep}le="{_number(bound)}"}} {running}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{braces} {_number(self.sum)}")
        out.append(f"{name}_count{braces} {self.count}")
        return out


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if float(value).is_integer():
        return str(int(value)) if abs(value) < 1e15 else repr(float(value))
    return repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """What the server counts; ``render()`` gives the text ``GET /metrics`` answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = {}
        self._seconds: dict[str, _Histogram] = {}
        self._batch = _Histogram(BATCH_BUCKETS)
        self._queue_depth = 0
        self._images = 0
        self._recent: deque[tuple[float, int]] = deque()
        self._hits = 0
        self._misses = 0
        self._builds = 0

    def _route(self, route: str) -> str:
        if route in self._seconds or len(self._seconds) < MAX_ROUTES:
            return route
        return "other"

    def request(self, route: str, status: int, seconds: float) -> None:
        """One answered request: ``route`` is its template (``/v1/classify``), not its URL."""
        with self._lock:
            route = self._route(str(route))
            key = (route, int(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            self._seconds.setdefault(route, _Histogram(REQUEST_BUCKETS)).observe(max(float(seconds), 0.0))

    def batch(self, size: int) -> None:
        """One run of the image tower over ``size`` images."""
        with self._lock:
            self._batch.observe(int(size))

    def queue_depth(self, n: int) -> None:
        """Images now waiting for the tower."""
        with self._lock:
            self._queue_depth = int(n)

    def images(self, n: int) -> None:
        """``n`` more images scored (or embedded)."""
        now = time.monotonic()
        with self._lock:
            self._images += int(n)
            self._recent.append((now, int(n)))
            self._forget(now)

    def _forget(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def text_cache(self, hit: bool) -> None:
        """A label set looked up in the in-memory text cache."""
        with self._lock:
            if hit:
                self._hits += 1
            else:
                self._misses += 1

    def text_build(self) -> None:
        """A label set's text classifier built (once per new set, however many requests wait)."""
        with self._lock:
            self._builds += 1

    def render(self) -> str:
        """All of it in the Prometheus text format 0.0.4."""
        now = time.monotonic()
        with self._lock:
            self._forget(now)
            rate = sum(n for _, n in self._recent) / RATE_WINDOW_S
            out: list[str] = []
            _family(out, "zeroshot_requests_total", "counter", "Requests answered, by route template and status.")
            for (route, status), n in sorted(self._requests.items()):
                out.append(f'zeroshot_requests_total{{route="{_label(route)}",status="{status}"}} {n}')
            _family(out, "zeroshot_request_seconds", "histogram", "Time from request to answer, by route.")
            for route, hist in sorted(self._seconds.items()):
                out += hist.lines("zeroshot_request_seconds", f'route="{_label(route)}"')
            _family(out, "zeroshot_batch_size", "histogram", "Images per run of the image tower.")
            out += self._batch.lines("zeroshot_batch_size", "")
            simple: list[tuple[str, str, str, Any]] = [
                ("zeroshot_queue_depth", "gauge", "Images waiting for the image tower.", self._queue_depth),
                ("zeroshot_images_total", "counter", "Images scored or embedded.", self._images),
                ("zeroshot_images_per_second", "gauge", f"Images per second over the last {RATE_WINDOW_S:g} s.", rate),
                ("zeroshot_text_cache_hits_total", "counter", "Label sets found in the text cache.", self._hits),
                ("zeroshot_text_cache_misses_total", "counter", "Label sets not in the text cache.", self._misses),
                ("zeroshot_text_builds_total", "counter", "Text classifiers built.", self._builds),
            ]
            for name, kind, help_text, value in simple:
                _family(out, name, kind, help_text)
                out.append(f"{name} {_number(value)}")
        return "\n".join(out) + "\n"


def _family(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def route_of(scope: Any) -> str:
    """The route template a request matched (``/v1/classify``), or ``unmatched``: never the raw
    path, whose values are unbounded."""
    route = scope.get("route") if hasattr(scope, "get") else None
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


class RequestTimer:
    """A pure ASGI middleware reporting each HTTP request's route template, status and time to
    ``metrics`` (passing messages through one by one: streamed answers stay streamed, and the
    time covers the whole answer). Put it outermost (add it last) so the guard's 401/413 count."""

    def __init__(self, app: Any, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app fails before it answers

        async def timed_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.request(route_of(scope), status, time.perf_counter() - start)


def install(app: Any, metrics: Metrics) -> None:
    """Time every request of ``app`` into ``metrics`` (call it after ``limits.install``)."""
    app.add_middleware(RequestTimer, metrics=metrics)
