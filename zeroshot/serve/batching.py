"""Dynamic batching across requests: decoded images from any number of requests share model calls.

The shape is infinity's batch handler's. A request reserves room for its images in a bounded
queue (:meth:`Batcher.admit`; none left: the caller answers 429), decodes them off the event loop
in the decode pool the CLI uses (:class:`DecodePool`), and hands the payloads in
(:meth:`Batcher.submit`). One collector thread takes up to ``max_batch`` images, waiting at most
``max_wait_ms`` after the first, runs the image tower once (:meth:`ImageEncoder.encode`), and
scores each request's images with that request's own function (its text classifier and options),
resolving the request's futures on the event loop (``call_soon_threadsafe``). A request that was
given up (its client went, its time ran out) is cancelled: its images still queued are dropped
before they reach the tower.

No decoding or scoring happens here: the decoders are :mod:`zeroshot.image.decoding`'s, the
tower :mod:`zeroshot.towers.pipeline`'s, and the score functions the routes pass in call
:mod:`zeroshot.uses.ranking`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("zeroshot")

# A request's images go to the decode pool this many at a time: a large request spreads over the
# workers, a one-image request is one round trip.
DECODE_CHUNK = 4

Item = tuple[str, bytes | None, str | None]  # (path, encoded bytes, known error): decoding's unit
Score = Callable[[list[str], Any], list[Any]]  # (paths, features [N, D]) -> one result per path


class DecodePool:
    """Encoded images -> payloads, off the event loop: forked decoding processes holding the
    image core's :class:`~zeroshot.image.decoding.FileDecoder` (as the CLI's), or threads when
    ``workers`` is 0 or the decoder cannot run in a forked process."""

    def __init__(self, decoder: Any, workers: int) -> None:
        from ..image.decoding import processes_usable

        self.decoder, self.workers = decoder, workers
        self.remote = workers >= 1 and processes_usable(decoder)
        self.pool = self._pool()

    def _pool(self) -> Executor:
        if self.remote:
            from ..image.decoding import process_pool

            return process_pool(self.decoder, self.workers)
        return ThreadPoolExecutor(max(1, self.workers), thread_name_prefix="zeroshot-decode")

    async def decode(self, items: Sequence[Item]) -> list[tuple[Any, str | None]]:
        """One ``(payload, None)`` or ``(None, message)`` per item, in order."""
        loop = asyncio.get_running_loop()
        chunks = [list(items[i : i + DECODE_CHUNK]) for i in range(0, len(items), DECODE_CHUNK)]
        futures = [asyncio.wrap_future(self._submit(chunk), loop=loop) for chunk in chunks]
        out: list[tuple[Any, str | None]] = []
        for chunk, fut in zip(chunks, futures, strict=True):
            try:
                out.extend(await fut)
            except BrokenProcessPool:  # a worker died (killed, out of memory): a new pool for the next
                self._renew()
                out.extend((None, "cannot decode: the decoding process ended") for _ in chunk)
        return out

    def _submit(self, chunk: list[Item]) -> Any:
        from ..image.decoding import decode_item, decode_items_in_worker

        try:
            if self.remote:
                return self.pool.submit(decode_items_in_worker, chunk)
            return self.pool.submit(lambda: [decode_item(self.decoder, item) for item in chunk])
        except BrokenProcessPool:
            self._renew()
            return self._submit(chunk)

    def _renew(self) -> None:
        old, self.pool = self.pool, self._pool()
        old.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass(eq=False)
class Ticket:
    """A request's place in the batcher: the queue room it holds (released as its images reach
    the tower, or all at once when it closes) and whether it was given up."""

    batcher: Batcher
    held: int
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False

    def cancel(self) -> None:
        """Given up: its images not yet taken are dropped before the tower, its room freed."""
        self.cancelled = True
        self.close()

    def close(self) -> None:
        self.batcher.release(self, self.held)


@dataclass(eq=False)
class Job:
    ticket: Ticket
    path: str
    payload: Any
    score: Score
    future: asyncio.Future[Any] = field(repr=False)


class Batcher:
    """The bounded queue and its collector thread (see the module's text). Metrics, when given, are
    told each batch's size, the images through the tower and the queue's depth."""

    def __init__(
        self, encoder: Any, *, max_batch: int, max_wait_ms: float, max_queue: int, metrics: Any = None
    ) -> None:
        self.encoder, self.max_batch, self.max_queue = encoder, max_batch, max_queue
        self.max_wait = max_wait_ms / 1000.0
        self.metrics = metrics
        self.waiting = 0  # images admitted and not yet taken for the tower (decoding or queued)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="zeroshot-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """The collector ends after the batch it is on (callers have stopped submitting)."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def admit(self, n: int) -> Ticket | None:
        """Room for ``n`` images, or None when the queue holds too many already."""
        with self._lock:
            if self.waiting + n > self.max_queue:
                return None
            self.waiting += n
            depth = self.waiting
        self._depth(depth)
        return Ticket(self, n, asyncio.get_running_loop())

    def release(self, ticket: Ticket, n: int) -> None:
        with self._lock:
            n = min(n, ticket.held)
            ticket.held -= n
            self.waiting -= n
            depth = self.waiting
        if n:
            self._depth(depth)

    def _depth(self, depth: int) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth(depth)

    def submit(self, ticket: Ticket, items: Sequence[tuple[str, Any]], score: Score) -> list[asyncio.Future[Any]]:
        """Queue decoded ``(path, payload)`` items; a future per item, resolved with its ``score``
        result (or ``{"path", "error"}`` when the tower refused it). Call on the event loop."""
        futures = []
        for path, payload in items:
            fut: asyncio.Future[Any] = ticket.loop.create_future()
            futures.append(fut)
            self._queue.put(Job(ticket, path, payload, score, fut))
        return futures

    # --- the collector thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            jobs, more = self._collect()
            for job in jobs:
                self.release(job.ticket, 1)
            live = [job for job in jobs if not job.ticket.cancelled]
            for job in jobs:
                if job.ticket.cancelled:
                    _settle(job, None, asyncio.CancelledError())  # (nobody awaits it: freed)
            if live:
                self._process(live)
            if not more:
                return

    def _collect(self) -> tuple[list[Job], bool]:
        """Up to ``max_batch`` jobs: the first as it comes, the others for at most ``max_wait``
        after it (then whatever is already queued). ``False``: stop after these.

        The wait is only for images known to be on their way (admitted, still decoding): a lone
        request goes to the tower at once instead of idling out ``max_wait``."""
        first = self._queue.get()
        if first is None:
            return [], False
        jobs = [first]
        deadline = time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                if left > 0 and self._coming(len(jobs)):
                    job = self._queue.get(timeout=left)
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, False
            jobs.append(job)
        return jobs, True

    def _coming(self, taken: int) -> bool:
        """Whether images other than the ``taken`` ones are admitted and not yet queued or taken."""
        with self._lock:
            return self.waiting > taken

    def _process(self, jobs: list[Job]) -> None:
        """The tower once over ``jobs``, then each request's images scored by its own function."""
        from ..image.images import Input
        from ..uses.ranking import error_record
        from ..uses.records import stacked

        try:
            encoded = [e for batch in self.encoder.encode([[(Input(j.path), j.payload, None) for j in jobs]])
                       for e in batch]  # fmt: skip
        except Exception as e:  # the tower failed on the whole batch: every request in it hears why
            log.error("the image tower failed on a batch of %d: %s", len(jobs), e)
            for job in jobs:
                _settle(job, None, e)
            return
        if self.metrics is not None:
            self.metrics.batch(len(jobs))
            self.metrics.images(len(jobs))
        groups: dict[int, list[tuple[Job, Any]]] = {}
        for job, enc in zip(jobs, encoded, strict=True):
            groups.setdefault(id(job.score), []).append((job, enc))
        for pairs in groups.values():
            good = [(job, enc) for job, enc in pairs if enc.feature is not None]
            try:
                results = iter(pairs[0][0].score([job.path for job, _ in good], stacked([e.feature for _, e in good]))
                               if good else [])  # fmt: skip
                for job, enc in pairs:
                    if enc.feature is None:
                        _settle(job, error_record(job.path, enc.error or "unknown error"), None)
                    else:
                        _settle(job, next(results), None)
            except Exception as e:  # a scoring bug: this request fails, the others in the batch do not
                log.error("scoring failed: %s", e)
                for job, _ in pairs:
                    _settle(job, None, e)


def _settle(job: Job, value: Any, error: BaseException | None) -> None:
    """Resolve ``job``'s future on its event loop (the collector runs in its own thread)."""

    def settle() -> None:
        if job.future.done():
            return
        if isinstance(error, asyncio.CancelledError):
            job.future.cancel()
        elif error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(value)

    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
        job.ticket.loop.call_soon_threadsafe(settle)
