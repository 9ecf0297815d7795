"""The image core: a stream of inputs to image features: decode in worker processes, run the
image tower in batches.

Features come out in input order, one per input, a batch at a time (records are made from them by
:mod:`zeroshot.uses.records`). Files are decoded by a pool of
worker processes (or threads) with a bounded look-ahead, so memory stays bounded however many
inputs there are; workers ship uint8 pixels and the batch is normalized on the model's device
(:mod:`zeroshot.image.decoding`). On CUDA, JPEGs can instead be decoded as a batch by nvJPEG
(:mod:`zeroshot.image.tensordecode`), one batch ahead of the model.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from ..image import video
from ..image.decoding import Cached, FileDecoder, Fresh, cpu_count, processes_usable
from ..image.images import DEFAULT_MAX_PIXELS, ImageError, Input, MemoryInput, Pause
from ..image.reading import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, is_url
from ..image.streams import PROCESS_CHUNK, ahead, decode_stream, lookahead_for
from ..image.video import FrameInput, VideoPart
from ..image.videodecode import parts

log = logging.getLogger("zeroshot")
WORKER_KINDS = ("process", "thread")


class Decoder(str, Enum):
    """``--decoder``: auto (batched on CUDA, else pillow), pillow, or batched (JPEGs on the device)."""

    AUTO = "auto"
    PILLOW = "pillow"
    BATCHED = "batched"


DECODERS = tuple(d.value for d in Decoder)


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


@dataclass
class DecodeOptions:
    """How files become pixels. ``decoder``: auto (batched on CUDA, else pillow), pillow, batched.
    Checked when made by the options' one definition (:mod:`zeroshot.base.options`)."""

    workers: int | None = None
    worker_kind: str = "process"
    decoder: str = "auto"
    jpeg_draft: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_bytes: int | None = DEFAULT_MAX_BYTES  # per input, 0 or None: no cap (see zeroshot.image.reading)
    timeout: float = DEFAULT_TIMEOUT  # seconds, for URLs

    def __post_init__(self) -> None:
        from ..base.options import OPTIONS

        for name in ("workers", "jpeg_draft", "max_pixels", "max_bytes", "timeout"):
            OPTIONS[name].check(getattr(self, name))
        if self.timeout is None:
            self.timeout = DEFAULT_TIMEOUT
        _check_decoder(self.decoder)
        if self.worker_kind not in WORKER_KINDS:
            raise ValueError(f"worker_kind must be one of {', '.join(WORKER_KINDS)}, not {self.worker_kind!r}")


def _check_decoder(name: Any) -> None:
    if name not in DECODERS:
        from ..base.errors import UsageError
        from ..base.options import named

        raise UsageError(f"unknown {named('decoder', name)} (choose from {', '.join(DECODERS)})")


def _resolve_decoder(name: str, device: Any, split: Any) -> str:
    _check_decoder(name)
    if name == "auto":
        name = "batched" if str(device).startswith("cuda") else "pillow"
    if name == "batched" and (split is None or split.resize is None):
        log.info("this model's preprocessing is not Resize + CenterCrop; decoding with Pillow")
        return "pillow"
    return name


class Encoded(NamedTuple):
    """One input after the image tower: its raw float32 feature [D] on the model's device, or the
    one-line error that kept it from getting one."""

    input: Input
    feature: Any
    error: str | None


class Batch:
    """Decoded items of one model call, with the model input made from them."""

    def __init__(self, items: list[tuple[Input, Any, str | None]]) -> None:
        self.items = items
        self.ok = [(inp, payload) for inp, payload, _ in items if payload is not None]
        self.pixels: Any = None  # model input for the payloads that need the image tower
        self.todo = [i for i, (_, p) in enumerate(self.ok) if not isinstance(p, Cached)]  # indices into ok
        self.error_for: dict[int, str] = {}  # id(input) -> error found while preparing
        self.event: Any = None  # CUDA: recorded on the preparing stream when the input is ready


class ImageEncoder:
    """The image-to-features core that ``classify`` (both engines' records), ``eval`` and the
    library share: inputs -> payloads (worker processes, :class:`~zeroshot.image.decoding.FileDecoder`)
    -> one model input per batch -> the image tower -> :class:`Encoded`, in input order.

    Payloads are uint8 pixels (the PIL stage ran in a worker), float tensors (the whole transform
    did), :class:`~zeroshot.image.decoding.Jpeg` bytes (decoded as a batch on the device),
    :class:`~zeroshot.image.decoding.Cached` features (``image_cache`` hits) or
    :class:`~zeroshot.image.decoding.Fresh` (pixels with their content digest, to store).
    """

    def __init__(
        self,
        tower: Any,
        *,
        batch_size: int = 32,
        workers: int | None = None,
        image_cache: Any = None,
        options: DecodeOptions | None = None,
    ) -> None:
        from .runtimes import as_tower

        opts = options or DecodeOptions()
        workers = opts.workers if workers is None else workers
        # ``tower``: a :mod:`zeroshot.towers.runtimes` image tower, or a LoadedModel (its torch tower).
        self.tower = tower = as_tower(tower)
        self.workers = default_workers(tower.device) if workers is None else workers
        if opts.worker_kind not in WORKER_KINDS:
            raise ValueError(f"worker_kind must be one of {WORKER_KINDS}")
        self.opts, self.batch_size, self.image_cache = opts, batch_size, image_cache
        self.device = tower.device
        self.split = split = tower.split
        decoder_name = _resolve_decoder(opts.decoder, self.device, split)
        if decoder_name == "batched" and not tower.batched_jpeg:
            log.info("this runtime takes decoded pixels; decoding with Pillow")
            decoder_name = "pillow"
        self.decoder = FileDecoder(
            tower.preprocess, split, digest=image_cache is not None, jpeg_draft=opts.jpeg_draft,
            raw_jpeg=decoder_name == "batched", max_pixels=opts.max_pixels, max_bytes=opts.max_bytes,
            timeout=opts.timeout,
        )  # fmt: skip
        if decoder_name == "batched":  # and, for the JPEGs the batched decoder refuses, Pillow:
            tower.use_batched_jpeg(FileDecoder(tower.preprocess, split, jpeg_draft=opts.jpeg_draft,
                                               max_pixels=opts.max_pixels, max_bytes=opts.max_bytes))  # fmt: skip

    def batches(self, inputs: Iterable[Input]) -> Iterator[list[Encoded]]:
        """Files and URLs -> features, one list per model call (errors included), in input order."""
        return self.encode(self._decoded(inputs))

    def encode(self, decoded: Iterable[list[tuple[Input, Any, str | None]]]) -> Iterator[list[Encoded]]:
        """Batches of decoded items (input, payload or None, error) -> features. ``eval`` enters
        here with images it holds in memory, decoded by :meth:`FileDecoder.decode_image`."""
        if self.tower.overlap:  # batched decoding and copies to the device alongside the model
            for batch in ahead(iter(decoded), self._prepare):
                yield self._finish(batch)
        else:
            for items in decoded:
                yield self._finish(self._prepare(items))

    def _cached(self, inp: Input) -> tuple[Any, str | None] | None:
        """A cache hit answered here, without a worker round trip (a hit is a read, a hash, a lookup)."""
        return cache_lookup(self.image_cache, inp, self.opts.max_bytes)

    def _decoded(self, inputs: Iterable[Input]) -> Iterator[list[tuple[Input, Any, str | None]]]:
        """Decoded items in batches of ``batch_size`` good ones (or 4x that with errors: a run of bad
        inputs neither piles up nor delays its records); a :class:`~zeroshot.image.images.Pause` in the
        inputs ends the batch early, so a live stream's records are not held back."""
        pending: list[tuple[Input, Any, str | None]] = []
        good = 0
        pool_factory = remote = None
        # The batched decoder's workers only read files and their JPEG headers: threads (file reads
        # release the GIL) hand the bytes over without pickling them through a pipe, which held a
        # forked pool to about 700 images/s on an H200 while nvJPEG decodes 11,000 (gpu_throughput.py).
        forked = self.opts.worker_kind == "process" and not self.decoder.raw_jpeg
        if self.workers >= 1 and forked and processes_usable(self.decoder):
            from ..image.decoding import decode_in_worker, process_pool

            pool_factory = lambda: process_pool(self.decoder, self.workers)  # noqa: E731
            remote = decode_in_worker
        look = lookahead_for(self.batch_size, max(1, self.workers))
        answers: dict[int, tuple[Any, str | None]] = {}  # frames the image cache answered, by id

        def cached_frame(f: FrameInput) -> bool:
            answer = self._cached(f)
            if answer is not None:
                answers[id(f)] = answer
            return answer is not None

        single = cached_frame if self.image_cache is not None else None
        stream = decode_stream(parts(inputs, single), self.decoder, self.workers, look, pool_factory, remote,
                               PROCESS_CHUNK, lambda inp: answers.pop(id(inp), None) or self._cached(inp),
                               side=lambda inp: inp.error is None and is_url(inp.path) and not video.is_part(inp)
                               and not isinstance(inp, MemoryInput),
                               pause=lambda inp: isinstance(inp, Pause))  # fmt: skip
        for item in self._frames(stream):
            if isinstance(item[0], Pause):
                if pending:
                    yield pending
                    pending, good = [], 0
                continue
            pending.append(item)
            if item[1] is not None:
                good += 1
            if good >= self.batch_size or len(pending) >= 4 * self.batch_size:
                yield pending
                pending, good = [], 0
        if pending:
            yield pending

    def _frames(self, stream: Iterable[tuple[Input, Any, str | None]]) -> Iterator[tuple[Input, Any, str | None]]:
        """Decoded items with each :class:`~zeroshot.image.video.VideoPart` opened into its frames."""
        for inp, payload, error in stream:
            if not isinstance(inp, VideoPart):
                yield inp, payload, error
                continue
            results = payload if payload is not None else [(None, error)] * len(inp.frames)
            for frame, (pixels, err) in zip(inp.frames, results, strict=True):
                if pixels is not None and self.image_cache is not None:
                    with contextlib.suppress(ImageError):  # the file went meanwhile: classified, not stored
                        pixels = Fresh(pixels, video.frame_digest(frame))
                yield frame, pixels, err

    def _prepare(self, items: list[tuple[Input, Any, str | None]]) -> Batch:
        """Everything before the image tower: may run in a helper thread, one batch ahead."""
        batch = Batch(items)
        if batch.todo:
            payloads = [p.pixels if isinstance(p, Fresh) else p for p in (batch.ok[i][1] for i in batch.todo)]
            self.tower.prepare(payloads, batch)
        return batch

    def _finish(self, batch: Batch) -> list[Encoded]:
        """The image tower over the batch; cached features filled in, new ones stored."""
        ok, tower = batch.ok, self.tower
        feats: list[Any] = [None] * len(ok)
        if batch.pixels is not None:
            computed = tower.encode(batch)
            fresh = []
            for j, i in enumerate(batch.todo):
                feats[i] = computed[j]
                p = ok[i][1]
                if isinstance(p, Fresh):
                    fresh.append((p.digest, computed[j]))
            if fresh and self.image_cache is not None:
                self.image_cache.put_many([(d, tower.to_numpy(v)) for d, v in fresh])
        for i, (_, p) in enumerate(ok):
            if isinstance(p, Cached):
                feats[i] = tower.from_numpy(p.feature)
        by_input = {id(inp): feats[i] for i, (inp, _) in enumerate(ok) if id(inp) not in batch.error_for}
        return [
            Encoded(inp, None, batch.error_for.get(id(inp)) or err or "unknown error")
            if payload is None or by_input.get(id(inp)) is None
            else Encoded(inp, by_input[id(inp)], None)
            for inp, payload, err in batch.items
        ]


def cache_lookup(image_cache: Any, inp: Input, max_bytes: int | None) -> tuple[Any, str | None] | None:
    """What the image-embedding cache says of a file input (or encoded bytes given in memory):
    ``(Cached(feature), None)`` for a hit, ``(None, error)`` when the file cannot even be read to be
    hashed, None when it has no answer (no cache, a miss, an input already in error, a URL: the
    decoders hash what they fetch; a PIL image or array: never cached)."""
    if image_cache is None or inp.error is not None or isinstance(inp, VideoPart):
        return None
    from ..image.reading import file_digest

    if isinstance(inp, MemoryInput):  # its bytes are keyed as a file's are; pixels given as such are not
        if inp.data is None or (max_bytes and len(inp.data) > max_bytes):
            return None  # the decoder says why it is refused
        from ..image.imagecache import content_digest

        feature = image_cache.get(content_digest(inp.data))
        return (Cached(feature), None) if feature is not None else None
    try:
        if isinstance(inp, FrameInput):
            feature = image_cache.get(video.frame_digest(inp))
        elif is_url(inp.path):
            return None
        else:
            feature = image_cache.get(file_digest(inp.path, max_bytes))
    except ImageError as e:
        return None, str(e)
    return (Cached(feature), None) if feature is not None else None


def cache_first(
    inputs: Iterable[Input],
    image_cache: Any,
    encoder: Callable[[], ImageEncoder],
    *,
    batch_size: int = 32,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> Iterator[list[Encoded]]:
    """Batches of :class:`Encoded` answered by the image-embedding cache alone (a read, a hash, a
    lookup: no model, no torch) for as long as every file is found there or fails on its own (missing,
    unreadable, too big); from the first input that needs the image tower (a new file, a URL) on,
    ``encoder()``, which loads the model only then, takes the rest. The features and errors are
    the ones :class:`ImageEncoder` gives for the same inputs, so the records are too."""
    it = iter(inputs)
    batch: list[Encoded] = []
    for inp in it:
        if isinstance(inp, Pause):  # a live stream has nothing more for now: hand on what is done
            if batch:
                yield batch
                batch = []
            continue
        if inp.error is not None:
            batch.append(Encoded(inp, None, inp.error))
        else:
            answer = cache_lookup(image_cache, inp, max_bytes)
            if answer is None:
                break
            payload, error = answer
            batch.append(Encoded(inp, None if payload is None else payload.feature, error))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    else:
        if batch:
            yield batch
        return
    if batch:
        yield batch
    yield from encoder().batches(itertools.chain([inp], it))
