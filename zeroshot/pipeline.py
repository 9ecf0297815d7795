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

Decoded = tuple[Input, Any, str | None]  # (input, payload or None, error or None)
T = TypeVar("T")


class Cached:
    """A decode result that is already an embedding (from the image cache)."""

    __slots__ = ("feature",)

    def __init__(self, feature: Any) -> None:
        self.feature = feature


class Fresh:
    """A preprocessed tensor whose embedding is to be stored under ``digest`` once computed."""

    __slots__ = ("digest", "tensor")

    def __init__(self, tensor: Any, digest: str) -> None:
        self.tensor = tensor
        self.digest = digest


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _decode(inp: Input, preprocess: Any) -> tuple[Any, str | None]:
    if inp.error is not None:
        return None, inp.error
    try:
        return load_tensor(inp.path, preprocess), None
    except ImageError as e:
        return None, str(e)


def _decode_cached(inp: Input, preprocess: Any, cache: Any) -> tuple[Any, str | None]:
    """Read the file once: hash its bytes, return the cached embedding or decode from memory."""
    import io

    from .imagecache import content_digest

    if inp.error is not None:
        return None, inp.error
    try:
        with open(inp.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, "no such file"
    except IsADirectoryError:
        return None, "is a directory"
    except PermissionError:
        return None, "permission denied"
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"
    digest = content_digest(data)
    feature = cache.get(digest)
    if feature is not None:
        return Cached(feature), None
    try:
        return Fresh(load_tensor(io.BytesIO(data), preprocess), digest), None
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


def encode_images(loaded: LoadedModel, tensors: list[Any]) -> Any:
    """Raw float32 image features [N, D] of preprocessed tensors, on the model's device."""
    import torch

    batch = torch.stack(tensors)
    cuda = str(loaded.device).startswith("cuda")
    if cuda:  # page-locked memory lets the copy overlap with the GPU's work
        batch = batch.pin_memory()
    batch = batch.to(loaded.device, dtype=loaded.input_dtype, non_blocking=cuda)
    with torch.inference_mode():
        return loaded.model.encode_image(batch).float()


def classify_inputs(
    loaded: LoadedModel,
    text: TextClassifier,
    inputs: Iterable[Input],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int | None = None,
    image_cache: Any = None,
) -> Iterator[dict[str, Any]]:
    """Yield one record per input, in order: a classification, or ``{"path", "error"}``.

    With ``image_cache`` (an :class:`~zeroshot.imagecache.ImageEmbeddingCache`), files whose
    content was seen before skip decoding and the image tower; new embeddings are stored.
    """
    import torch

    workers = default_workers() if workers is None else workers
    scale = loaded.logit_scale
    weights = text.weights.to(loaded.device)
    classes = text.classes
    pending: list[Decoded] = []
    good = 0

    def features(payloads: list[Any]) -> Any:
        """Raw image features [N, D] for decoded payloads: cached ones as stored, the rest computed."""
        out: list[Any] = [None] * len(payloads)
        todo = [i for i, p in enumerate(payloads) if not isinstance(p, Cached)]
        if todo:
            tensors = [p.tensor if isinstance(p, Fresh) else p for p in (payloads[i] for i in todo)]
            computed = encode_images(loaded, tensors)
            for j, i in enumerate(todo):
                out[i] = computed[j]
            fresh = [(payloads[i].digest, computed[j].cpu().numpy()) for j, i in enumerate(todo)
                     if isinstance(payloads[i], Fresh)]  # fmt: skip
            if fresh and image_cache is not None:
                image_cache.put_many(fresh)
        for i, p in enumerate(payloads):
            if isinstance(p, Cached):
                out[i] = torch.from_numpy(p.feature.copy()).to(loaded.device)
        return torch.stack(out)

    def flush() -> Iterator[dict[str, Any]]:
        ok = [(inp, payload) for inp, payload, _ in pending if payload is not None]
        by_input: dict[int, dict[str, Any]] = {}
        if ok:
            with torch.inference_mode():
                probs = probabilities(features([p for _, p in ok]), weights, scale)
            recs = records([inp.path for inp, _ in ok], probs, classes, top_k)
            by_input = {id(inp): rec for (inp, _), rec in zip(ok, recs, strict=True)}
        for inp, payload, err in pending:
            yield by_input[id(inp)] if payload is not None else error_record(inp.path, err or "unknown error")

    if image_cache is not None:
        decode = functools.partial(_decode_cached, preprocess=loaded.preprocess, cache=image_cache)
    else:
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
