"""Classify a stream of inputs: decode in worker processes, run the model in batches.

Records come out in input order, one per input, a batch at a time. Files are decoded by a pool of
worker processes (or threads) with a bounded look-ahead, so memory stays bounded however many
inputs there are; workers ship uint8 pixels and the batch is normalized on the model's device
(:mod:`zeroshot.decoding`). On CUDA, JPEGs can instead be decoded as a batch by nvJPEG
(:mod:`zeroshot.tensordecode`), one batch ahead of the model.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .classifier import TextClassifier
from .decoding import Cached, FileDecoder, Fresh, Jpeg, cpu_count, processes_usable, split_preprocess
from .images import DEFAULT_MAX_PIXELS, ImageError, Input
from .models import LoadedModel
from .ranking import error_record, feature_records
from .reading import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, is_url

log = logging.getLogger("zeroshot")
T = TypeVar("T")
WORKER_KINDS = ("process", "thread")
DECODERS = ("auto", "pillow", "batched")
# Files per round trip to a worker process: each round trip costs about a millisecond of
# pickling and queue hand-offs, as much as a cache hit's whole work.
PROCESS_CHUNK = 8
FETCH_THREADS = 8  # URLs fetched at once (network-bound, so more than the cores)


def default_workers(device: Any = "cpu") -> int:
    """Decoding workers for a run on ``device``.

    On CUDA the GPU outruns any number of Pillow decoders: every core but one (at most 32). On the
    CPU the model needs the cores and decoding is a small share of the work (about a tenth for
    ViT-B-32 on 640x480 JPEGs): a quarter of the cores, at least one.
    """
    cores = cpu_count()
    if str(device).startswith("cuda"):
        return max(1, min(32, cores - 1))
    return max(1, cores // 4)


def default_batch_size(device: Any) -> int:
    """Images per model call: 32 on the CPU (bigger batches are no faster there), 256 on CUDA."""
    return 256 if str(device).startswith("cuda") else 32


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
    other URLs; their records still come out in input order.
    """
    if workers <= 0 and pool_factory is None:
        for item in items:
            answer = ready(item) if ready is not None else None
            yield (item, *(answer if answer is not None else decode(item)))
        return
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    def new_pool() -> Any:
        if pool_factory is not None:
            return pool_factory()
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zeroshot-decode")

    def local_many(batch: list[T]) -> list[tuple[Any, str | None]]:
        return [decode(item) for item in batch]

    fn = remote if (pool_factory is not None and remote is not None) else local_many
    chunk = max(1, chunk) if pool_factory is not None else 1
    max_chunks = max(2 * workers, lookahead // chunk)
    pool = new_pool()
    side_pool: Any = None
    queue: deque[tuple[list[T], Any]] = deque()

    def take() -> Iterator[tuple[T, Any, str | None]]:
        nonlocal pool
        head, fut = queue.popleft()
        try:
            results = fut.result()
        except BrokenProcessPool:
            pass
        else:
            for item, result in zip(head, results, strict=True):
                yield (item, *result)
            return
        # Every chunk in flight was lost with the pool. Retry their items one at a time in a new
        # pool: an item that kills a worker on its own is the culprit and becomes an error record.
        lost = [*head, *(item for chunk_items, _ in queue for item in chunk_items)]
        queue.clear()
        pool.shutdown(wait=False, cancel_futures=True)
        pool = new_pool()
        for item in lost:
            try:
                (result,) = pool.submit(fn, [item]).result()
            except BrokenProcessPool:
                log.debug("a decoding worker died on %r", item)
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool()
                result = (None, "the image decoder crashed on this file")
            yield (item, *result)

    try:
        pending: list[T] = []
        for item in items:
            answer = ready(item) if ready is not None else None
            aside = answer is None and side is not None and side(item)
            if answer is not None or aside:
                if pending:  # keep the order: what came before goes out first
                    queue.append((pending, pool.submit(fn, pending)))
                    pending = []
                if aside:
                    if side_pool is None:
                        side_pool = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="zeroshot-fetch")
                    queue.append(([item], side_pool.submit(local_many, [item])))
                else:
                    queue.append(([item], _Done([answer])))
            else:
                pending.append(item)
            if len(pending) >= chunk:
                queue.append((pending, pool.submit(fn, pending)))
                pending = []
            while len(queue) >= max_chunks:
                yield from take()
        if pending:
            queue.append((pending, pool.submit(fn, pending)))
        while queue:
            yield from take()
    finally:
        for _, fut in queue:  # stopped early (closed pipe, interrupt): drop what is queued
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if side_pool is not None:  # a fetch under way ends at its own timeout; nobody waits for it
            side_pool.shutdown(wait=False, cancel_futures=True)


class _Done:
    """A finished future's stand-in, for items answered without a worker."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value

    def cancel(self) -> bool:
        return False


def encode_images(loaded: LoadedModel, tensors: list[Any]) -> Any:
    """Raw float32 image features [N, D] of preprocessed float tensors, on the model's device."""
    import torch

    batch = torch.stack(tensors)
    cuda = str(loaded.device).startswith("cuda")
    if cuda:  # page-locked memory lets the copy overlap with the GPU's work
        batch = batch.pin_memory()
    batch = batch.to(loaded.device, dtype=loaded.input_dtype, non_blocking=cuda)
    with torch.inference_mode():
        return loaded.model.encode_image(batch).float()


@dataclass
class DecodeOptions:
    """How files become pixels. ``decoder``: auto (batched on CUDA, else pillow), pillow, batched."""

    workers: int | None = None
    worker_kind: str = "process"
    decoder: str = "auto"
    jpeg_draft: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_bytes: int | None = DEFAULT_MAX_BYTES  # per input, 0 or None: no cap (see zeroshot.reading)
    timeout: float = DEFAULT_TIMEOUT  # seconds, for URLs


def _resolve_decoder(name: str, device: Any, split: Any) -> str:
    if name not in DECODERS:
        from .errors import UsageError

        raise UsageError(f"unknown --decoder {name!r} (choose from {', '.join(DECODERS)})")
    if name == "auto":
        name = "batched" if str(device).startswith("cuda") else "pillow"
    if name == "batched" and (split is None or split.resize is None):
        log.info("this model's preprocessing is not Resize + CenterCrop; decoding with Pillow")
        return "pillow"
    return name


class Batch:
    """Decoded items of one model call, with the model input and features made from them."""

    def __init__(self, items: list[tuple[Input, Any, str | None]]) -> None:
        self.items = items
        self.pixels: Any = None  # model input for the payloads that need the image tower
        self.todo: list[int] = []  # indices (into ok) of those payloads
        self.error_for: dict[int, str] = {}  # id(input) -> error found while preparing
        self.event: Any = None  # CUDA: recorded on the preparing stream when the input is ready


def classify_inputs(
    loaded: LoadedModel,
    text: TextClassifier,
    inputs: Iterable[Input],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int | None = None,
    image_cache: Any = None,
    options: DecodeOptions | None = None,
    multi_label: Any = None,
) -> Iterator[dict[str, Any]]:
    """Yield one record per input, in order: a classification, or ``{"path", "error"}``.

    With ``multi_label`` (a :class:`~zeroshot.ranking.MultiLabel`), each label is scored on its own
    and the record lists every label over the threshold (``labels``).

    With ``image_cache`` (an :class:`~zeroshot.imagecache.ImageEmbeddingCache`), files whose
    content was seen before skip decoding and the image tower; new embeddings are stored.
    """
    import torch

    opts = options or DecodeOptions()
    workers = opts.workers if workers is None else workers
    workers = default_workers(loaded.device) if workers is None else workers
    if opts.worker_kind not in WORKER_KINDS:
        raise ValueError(f"worker_kind must be one of {WORKER_KINDS}")
    device = loaded.device
    cuda = str(device).startswith("cuda")
    split = split_preprocess(loaded.preprocess)
    decoder_name = _resolve_decoder(opts.decoder, device, split)
    decoder = FileDecoder(
        loaded.preprocess,
        split,
        digest=image_cache is not None,
        jpeg_draft=opts.jpeg_draft,
        raw_jpeg=decoder_name == "batched",
        max_pixels=opts.max_pixels,
        max_bytes=opts.max_bytes,
        timeout=opts.timeout,
    )

    def cached(inp: Input) -> tuple[Any, str | None] | None:
        """A cache hit answered here, without a worker round trip (a hit is a read, a hash, a lookup)."""
        if image_cache is None or inp.error is not None or is_url(inp.path):
            return None  # URLs are fetched by the decoders, which hash what they fetched
        from .reading import file_digest

        try:
            feature = image_cache.get(file_digest(inp.path, opts.max_bytes))
        except ImageError as e:
            return None, str(e)
        return (Cached(feature), None) if feature is not None else None

    batched = None
    if decoder_name == "batched" and split is not None and split.resize is not None:
        from .decoding import StandardPilStage
        from .tensordecode import BatchJpegDecoder

        assert isinstance(split.pil_stage, StandardPilStage)
        batched = BatchJpegDecoder(split.pil_stage, device)
    # For the JPEGs nvJPEG refuses:
    fallback = FileDecoder(loaded.preprocess, split, jpeg_draft=opts.jpeg_draft, max_pixels=opts.max_pixels,
                           max_bytes=opts.max_bytes)  # fmt: skip

    scale = loaded.logit_scale
    weights = text.weights.to(device)
    classes = text.classes

    def model_input(payloads: list[Any], batch: Batch, ok: list[tuple[Input, Any]]) -> Any:
        """Payloads (uint8 pixels, float tensors, JPEG bytes) -> one model input on the device."""
        jpeg_at = [i for i, p in enumerate(payloads) if isinstance(p, Jpeg)]
        if jpeg_at and batched is not None:
            for i, px in zip(jpeg_at, batched([payloads[i] for i in jpeg_at]), strict=True):
                if px is None:
                    try:
                        px = fallback.decode_bytes(payloads[i].data)
                    except ImageError as e:
                        batch.error_for[id(ok[batch.todo[i]][0])] = str(e)
                payloads[i] = px
        keep = [i for i, p in enumerate(payloads) if p is not None]
        if len(keep) < len(payloads):
            batch.todo = [batch.todo[i] for i in keep]
            payloads = [payloads[i] for i in keep]
        if not payloads:
            return None
        if split is None:  # whole transform ran in the workers: float tensors
            return torch.stack(payloads).to(device, dtype=loaded.input_dtype, non_blocking=cuda)
        from .decoding import to_model_input

        stacked: Any
        if any(isinstance(p, torch.Tensor) for p in payloads):  # some decoded on the device
            stacked = torch.stack([p if isinstance(p, torch.Tensor) else torch.from_numpy(p).to(device)
                                   for p in payloads])  # fmt: skip
        else:
            import numpy as np

            stacked = np.stack(payloads)
        return to_model_input(stacked, split, device, loaded.input_dtype)

    def prepare(items: list[tuple[Input, Any, str | None]]) -> Batch:
        """Everything before the image tower: may run in a helper thread, one batch ahead."""
        batch = Batch(items)
        ok = [(inp, payload) for inp, payload, _ in items if payload is not None]
        batch.todo = [i for i, (_, p) in enumerate(ok) if not isinstance(p, Cached)]
        if batch.todo:
            payloads = []
            for i in batch.todo:
                p = ok[i][1]
                payloads.append(p.pixels if isinstance(p, Fresh) else p)
            with torch.inference_mode():
                if cuda:
                    stream = _prep_stream(device)
                    with torch.cuda.stream(stream):
                        batch.pixels = model_input(payloads, batch, ok)
                        batch.event = torch.cuda.Event()
                        batch.event.record(stream)
                else:
                    batch.pixels = model_input(payloads, batch, ok)
        return batch

    def finish(batch: Batch) -> Iterator[dict[str, Any]]:
        ok = [(inp, payload) for inp, payload, _ in batch.items if payload is not None]
        ok_idx = [i for i, (inp, _) in enumerate(ok) if id(inp) not in batch.error_for]
        by_input: dict[int, dict[str, Any]] = {}
        if ok_idx:
            with torch.inference_mode():
                feats: list[Any] = [None] * len(ok)
                if batch.pixels is not None:
                    if batch.event is not None:  # made on the preparing stream: wait for it, and
                        # tell the allocator the main stream uses it, so it is not recycled early
                        main = torch.cuda.current_stream(device)
                        main.wait_event(batch.event)
                        batch.pixels.record_stream(main)
                    computed = loaded.model.encode_image(batch.pixels).float()
                    fresh = []
                    for j, i in enumerate(batch.todo):
                        feats[i] = computed[j]
                        p = ok[i][1]
                        if isinstance(p, Fresh):
                            fresh.append((p.digest, computed[j]))
                    if fresh and image_cache is not None:
                        image_cache.put_many([(d, v.cpu().numpy()) for d, v in fresh])
                for i, (_, p) in enumerate(ok):
                    if isinstance(p, Cached):
                        feats[i] = torch.from_numpy(p.feature.copy()).to(device)
                paths = [ok[i][0].path for i in ok_idx]
                recs = feature_records(paths, torch.stack([feats[i] for i in ok_idx]), weights, scale, classes,
                                       top_k, multi_label)  # fmt: skip
            by_input = {id(ok[i][0]): rec for i, rec in zip(ok_idx, recs, strict=True)}
        for inp, payload, err in batch.items:
            if payload is not None and id(inp) in by_input:
                yield by_input[id(inp)]
            else:
                yield error_record(inp.path, batch.error_for.get(id(inp)) or err or "unknown error")

    def batches() -> Iterator[list[tuple[Input, Any, str | None]]]:
        pending: list[tuple[Input, Any, str | None]] = []
        good = 0
        pool_factory = remote = None
        if workers >= 1 and opts.worker_kind == "process" and processes_usable(decoder):
            from .decoding import decode_in_worker, process_pool

            pool_factory = lambda: process_pool(decoder, workers)  # noqa: E731
            remote = decode_in_worker
        look = lookahead_for(batch_size, max(1, workers))
        stream = decode_stream(inputs, decoder, workers, look, pool_factory, remote, PROCESS_CHUNK, cached,
                               side=lambda inp: inp.error is None and is_url(inp.path))  # fmt: skip
        for item in stream:
            pending.append(item)
            if item[1] is not None:
                good += 1
            # Errors alone also flush, so a run of bad inputs neither piles up nor delays its records.
            if good >= batch_size or len(pending) >= 4 * batch_size:
                yield pending
                pending, good = [], 0
        if pending:
            yield pending

    if cuda or batched is not None:  # overlap batched decoding and copies with the model
        for batch in _ahead(batches(), prepare):
            yield from finish(batch)
    else:
        for items in batches():
            yield from finish(prepare(items))


_streams: dict[str, Any] = {}


def _prep_stream(device: Any) -> Any:
    import torch

    key = str(device)
    if key not in _streams:
        _streams[key] = torch.cuda.Stream(device=device)
    return _streams[key]


def _ahead(gen: Iterator[T], fn: Callable[[T], Any]) -> Iterator[Any]:
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
