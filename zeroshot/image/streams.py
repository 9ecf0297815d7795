"""Concurrency plumbing for the image core: decoding many items at once with bounded memory and
records in input order (:func:`decode_stream`), and a helper thread one step ahead (:func:`ahead`)."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

log = logging.getLogger("zeroshot")
T = TypeVar("T")

# Files per round trip to a worker process: each round trip costs about a millisecond of
# pickling and queue hand-offs, as much as a cache hit's whole work.
PROCESS_CHUNK = 8
FETCH_THREADS = 8  # URLs fetched at once (network-bound, so more than the cores)


def lookahead_for(batch_size: int, workers: int) -> int:
    return max(2 * batch_size, 4 * workers)


def decode_stream(
    items: Iterable[T],
    decode: Callable[[T], tuple[Any, str | None]],
    workers: int,
    lookahead: int,
    pool_factory: Callable[[], Any] | None = None,
    remote: Callable[[list[T]], list[tuple[Any, str | None]]] | None = None,
    chunk: int = 1,
    ready: Callable[[T], tuple[Any, str | None] | None] | None = None,
    side: Callable[[T], bool] | None = None,
    pause: Callable[[T], bool] | None = None,
) -> Iterator[tuple[T, Any, str | None]]:
    """Run ``decode`` over items concurrently, yielding (item, payload, error) in input order.

    At most ``lookahead`` items are in flight, so memory stays bounded for any number of items.
    ``workers`` = 0 (and no pool) decodes in this thread. With ``pool_factory``, a process pool
    whose workers run ``remote`` on lists of up to ``chunk`` items (fewer round trips per image).
    A worker that dies (a decoder crash on a hostile file) costs no record: the pool is replaced
    and the items that were in flight are retried one at a time, so only the file that crashes a
    worker on its own gets an error record. ``ready`` (run here, in order) may answer an item
    without a worker, e.g. from a cache; it returns None for the items to decode. Items for which
    ``side`` is true (URLs: waiting on a network, not a core) are decoded by a separate pool of up
    to :data:`FETCH_THREADS` threads here, so a slow server holds up neither the files nor the
    other URLs; their records still come out in input order. An item for which ``pause`` is true
    is not decoded: everything before it is finished and yielded, then it is passed on as
    ``(item, None, None)`` (a live input stream that has nothing more for now).
    """
    if workers <= 0 and pool_factory is None:
        for item in items:
            if pause is not None and pause(item):
                yield (item, None, None)
                continue
            answer = ready(item) if ready is not None else None
            yield (item, *(answer if answer is not None else decode(item)))
        return
    chunk = max(1, chunk) if pool_factory is not None else 1
    max_chunks = max(2 * workers, lookahead // chunk)
    # The pools live exactly as long as this iteration: a consumer that stops early (a closed
    # pipe, an interrupt) shuts them down by closing the generator.
    flight = _InFlight(decode, workers, pool_factory, remote)
    try:
        for item in items:
            if pause is not None and pause(item):  # finish what is under way, then pass it on
                yield from flight.drain()
                yield (item, None, None)
                continue
            answer = ready(item) if ready is not None else None
            if answer is not None:
                flight.send_pending()  # keep the order: what came before goes out first
                flight.queue.append(([item], _Done([answer])))
            elif side is not None and side(item):
                flight.send_pending()
                flight.fetch_aside(item)
            else:
                flight.pending.append(item)
            if len(flight.pending) >= chunk:
                flight.send_pending()
            while len(flight.queue) >= max_chunks:
                yield from flight.take()
        yield from flight.drain()
    finally:
        flight.close()


class _InFlight:
    """What one :func:`decode_stream` has under way: its pools (started by the first item that
    needs one: cache hits and errors need none), the chunks submitted, in input order, and the
    items gathered for the next chunk."""

    def __init__(
        self,
        decode: Callable[[Any], tuple[Any, str | None]],
        workers: int,
        pool_factory: Callable[[], Any] | None,
        remote: Callable[[list[Any]], list[tuple[Any, str | None]]] | None,
    ) -> None:
        self.decode, self.workers, self.pool_factory = decode, workers, pool_factory
        self.fn = remote if (pool_factory is not None and remote is not None) else self.local_many
        self.pool: Any = None
        self.side_pool: Any = None
        self.queue: deque[tuple[list[Any], Any]] = deque()
        self.pending: list[Any] = []

    def new_pool(self) -> Any:
        if self.pool_factory is not None:
            return self.pool_factory()
        from concurrent.futures import ThreadPoolExecutor

        return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="zeroshot-decode")

    def local_many(self, batch: list[Any]) -> list[tuple[Any, str | None]]:
        return [self.decode(item) for item in batch]

    def send_pending(self) -> None:
        if self.pending:
            if self.pool is None:
                self.pool = self.new_pool()
            self.queue.append((self.pending, self.pool.submit(self.fn, self.pending)))
            self.pending = []

    def fetch_aside(self, item: Any) -> None:
        if self.side_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.side_pool = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="zeroshot-fetch")
        self.queue.append(([item], self.side_pool.submit(self.local_many, [item])))

    def drain(self) -> Iterator[tuple[Any, Any, str | None]]:
        self.send_pending()
        while self.queue:
            yield from self.take()

    def take(self) -> Iterator[tuple[Any, Any, str | None]]:
        """The oldest chunk's results; if its worker process died, every chunk in flight was lost
        with the pool: their items are retried one at a time in a new pool, and an item that kills
        a worker on its own is the culprit and becomes an error record."""
        from concurrent.futures.process import BrokenProcessPool

        head, fut = self.queue.popleft()
        try:
            results = fut.result()
        except BrokenProcessPool:
            pass
        else:
            for item, result in zip(head, results, strict=True):
                yield (item, *result)
            return
        lost = [*head, *(item for chunk_items, _ in self.queue for item in chunk_items)]
        self.queue.clear()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self.new_pool()
        for item in lost:
            try:
                (result,) = self.pool.submit(self.fn, [item]).result()
            except BrokenProcessPool:
                log.debug("a decoding worker died on %r", item)
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = self.new_pool()
                result = (None, "the image decoder crashed on this file")
            yield (item, *result)

    def close(self) -> None:
        for _, fut in self.queue:  # stopped early (closed pipe, interrupt): drop what is queued
            fut.cancel()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.side_pool is not None:  # a fetch under way ends at its own timeout; nobody waits for it
            self.side_pool.shutdown(wait=False, cancel_futures=True)


class _Done:
    """A finished future's stand-in, for items answered without a worker."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value

    def cancel(self) -> bool:
        return False


_streams: dict[str, Any] = {}


def prep_stream(device: Any) -> Any:
    import torch

    key = str(device)
    if key not in _streams:
        _streams[key] = torch.cuda.Stream(device=device)
    return _streams[key]


def ahead(gen: Iterator[T], fn: Callable[[T], Any]) -> Iterator[Any]:
    """``fn`` over ``gen`` in a helper thread, one result ahead of the consumer.

    When the consumer stops early, the helper is told to stop, joined, and ``gen`` is closed (which
    shuts its worker pool down) before this generator returns.
    """
    import queue

    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                q.put((kind, value), timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in gen:
                if not put("item", fn(x)):
                    return
            put("end", None)
        except BaseException as e:  # handed to the consumer and raised there
            put("error", e)

    thread = threading.Thread(target=run, name="zeroshot-prepare", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join()
        close = getattr(gen, "close", None)
        if close is not None:
            close()
