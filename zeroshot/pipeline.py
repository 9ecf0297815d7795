"""Classify a stream of inputs: decode in background threads, run the model in batches.

Records come out in input order, one per input, a batch at a time. Decoding happens in a small
thread pool with a bounded look-ahead (Pillow and torchvision release the GIL for the heavy parts),
so memory stays bounded however many inputs there are.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from .classifier import TextClassifier
from .images import ImageError, Input, load_tensor
from .models import LoadedModel
from .ranking import error_record, probabilities, records

Decoded = tuple[Input, Any, str | None]  # (input, tensor or None, error or None)
T = TypeVar("T")


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _decode(inp: Input, preprocess: Any) -> tuple[Any, str | None]:
    if inp.error is not None:
        return None, inp.error
    try:
        return load_tensor(inp.path, preprocess), None
    except ImageError as e:
        return None, str(e)


def decode_stream(
    items: Iterable[T], decode: Callable[[T], tuple[Any, str | None]], workers: int, lookahead: int
) -> Iterator[tuple[T, Any, str | None]]:
    """Run ``decode`` over items concurrently, yielding (item, tensor, error) in input order.

    At most ``lookahead`` items are in flight, so memory stays bounded for any number of items.
    """
    if workers <= 1:
        for item in items:
            yield (item, *decode(item))
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zeroshot-decode") as pool:
        queue: deque[tuple[T, Any]] = deque()
        try:
            for item in items:
                queue.append((item, pool.submit(decode, item)))
                if len(queue) >= lookahead:
                    head, fut = queue.popleft()
                    yield (head, *fut.result())
            while queue:
                head, fut = queue.popleft()
                yield (head, *fut.result())
        finally:
            for _, fut in queue:  # stopped early (closed pipe, interrupt): drop what is queued
                fut.cancel()


def lookahead_for(batch_size: int, workers: int) -> int:
    return max(2 * batch_size, 4 * workers)


def classify_inputs(
    loaded: LoadedModel,
    text: TextClassifier,
    inputs: Iterable[Input],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield one record per input, in order: a classification, or ``{"path", "error"}``."""
    import torch

    workers = default_workers() if workers is None else workers
    scale = loaded.logit_scale
    weights = text.weights.to(loaded.device)
    classes = text.classes
    pending: list[Decoded] = []
    good = 0

    def flush() -> Iterator[dict[str, Any]]:
        ok = [(inp, tensor) for inp, tensor, _ in pending if tensor is not None]
        by_path: dict[int, dict[str, Any]] = {}
        if ok:
            batch = torch.stack([tensor for _, tensor in ok]).to(loaded.device)
            with torch.inference_mode():
                feats = loaded.model.encode_image(batch)
                probs = probabilities(feats, weights, scale)
            recs = records([inp.path for inp, _ in ok], probs, classes, top_k)
            by_path = {id(inp): rec for (inp, _), rec in zip(ok, recs, strict=True)}
        for inp, tensor, err in pending:
            rec = by_path[id(inp)] if tensor is not None else error_record(inp.path, err or "unknown error")
            if on_record is not None:
                on_record(rec)
            yield rec

    decode = functools.partial(_decode, preprocess=loaded.preprocess)
    for item in decode_stream(inputs, decode, workers, lookahead_for(batch_size, workers)):
        pending.append(item)
        if item[1] is not None:
            good += 1
        # Errors alone also flush, so a run of bad inputs neither piles up nor delays its records.
        if good >= batch_size or len(pending) >= 4 * batch_size:
            yield from flush()
            pending, good = [], 0
    if pending:
        yield from flush()
