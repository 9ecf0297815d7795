"""Turning files into model-ready pixels: in worker processes (or threads), a batch at a time.

open_clip's eval transform is a chain of PIL steps (resize, crop, convert to RGB) followed by
``ToTensor`` (uint8 -> float / 255) and ``Normalize``. :func:`split_preprocess` cuts it there:
workers run the PIL steps and ship compact uint8 HxWx3 arrays (a quarter of the bytes of float),
and :func:`to_model_input` turns a whole batch into normalized floats on the model's device with
the same arithmetic as ``ToTensor`` + ``Normalize``, so the numbers are identical (a test checks).
A transform that does not fit this shape is run whole in the workers, as before.

This module imports no torch at the top: worker processes only need Pillow and numpy.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from .images import DEFAULT_MAX_PIXELS, ImageError, Input, MemoryInput, memory_image, open_image
from .reading import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, read_input, too_large
from .video import VideoPart
from .videodecode import decode_part

JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass(frozen=True)
class Split:
    """A preprocessing transform cut into its PIL part and its tensor part."""

    pil_stage: Any  # PIL image -> PIL RGB image (the transform's steps before ToTensor)
    mean: tuple[float, ...] | None  # Normalize's, or None when the transform has none
    std: tuple[float, ...] | None
    resize: int | None  # shortest-side size of a plain Resize(int) as the first step, else None
    interpolation: str | None  # that Resize's interpolation ("bicubic", "bilinear")
    crop: tuple[int, int] | None  # (height, width) of the CenterCrop right after it, else None


def _is_rgb_convert(step: Any) -> bool:
    if getattr(step, "__name__", "") == "_convert_to_rgb":
        return True
    return type(step).__name__ == "MaybeConvertMode" and getattr(step, "mode", None) == "RGB"


def split_preprocess(preprocess: Any) -> Split | None:
    """Cut an open_clip eval transform before ``ToTensor``; None if it does not have that shape.

    The shape required: PIL steps ending in a conversion to RGB, then ``ToTensor``, then at most
    one ``Normalize``. The resize/crop fields describe the common ``Resize(n)`` + ``CenterCrop``
    start, which the batched tensor decoder and JPEG draft mode know how to reproduce.
    """
    from torchvision import transforms as T

    steps = list(getattr(preprocess, "transforms", None) or [])
    cut = next((i for i, s in enumerate(steps) if isinstance(s, T.ToTensor)), None)
    if cut is None or cut == 0 or not _is_rgb_convert(steps[cut - 1]):
        return None
    after = steps[cut + 1 :]
    if len(after) > 1 or (after and not isinstance(after[0], T.Normalize)):
        return None
    mean = std = None
    if after:
        norm = after[0]
        if getattr(norm, "inplace", False):
            return None
        mean, std = tuple(float(v) for v in norm.mean), tuple(float(v) for v in norm.std)
    pil = steps[:cut]
    if len(pil) == 3 and isinstance(pil[0], T.Resize) and isinstance(pil[1], T.CenterCrop):
        size = pil[0].size
        size = size[0] if isinstance(size, (list, tuple)) and len(size) == 1 else size
        mode = getattr(pil[0].interpolation, "value", None)
        crop = tuple(int(v) for v in pil[1].size)
        crop = crop * 2 if len(crop) == 1 else crop
        if (
            isinstance(size, int) and pil[0].max_size is None and mode in _PIL_METHODS
            and len(crop) == 2 and max(crop) <= size
        ):  # fmt: skip
            stage = StandardPilStage(size, mode, (crop[0], crop[1]))
            return Split(stage, mean, std, size, mode, (crop[0], crop[1]))
    if len(pil) == 2 and isinstance(pil[0], T.Resize):  # "squash": straight to (height, width)
        size, mode = pil[0].size, getattr(pil[0].interpolation, "value", None)
        if isinstance(size, (list, tuple)) and len(size) == 2 and pil[0].max_size is None and mode in _PIL_METHODS:
            return Split(SquashPilStage((int(size[0]), int(size[1])), mode), mean, std, None, mode, None)
    return Split(T.Compose(pil), mean, std, None, None, None)


_PIL_METHODS = ("bicubic", "bilinear")


class SquashPilStage:
    """``Resize((height, width))`` (no aspect kept: open_clip's "squash"), convert to RGB, with
    Pillow alone: the call torchvision makes for a PIL image (none when the size is already right)."""

    def __init__(self, size: tuple[int, int], interpolation: str) -> None:
        self.size = size
        self.interpolation = interpolation

    def __call__(self, image: Any) -> Any:
        from PIL import Image

        h, w = self.size
        if (w, h) != image.size:
            method = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
            image = image.resize((w, h), method)
        return image.convert("RGB")


class StandardPilStage:
    """``Resize(size)`` (shortest side), ``CenterCrop(crop)``, convert to RGB, with Pillow alone.

    The same Pillow calls torchvision makes for these steps on a PIL image (output size rounded
    down as ``_compute_resized_output_size`` does; crop offsets rounded as ``center_crop`` does), so
    worker processes need not import torch. A test checks it pixel for pixel against torchvision.
    """

    def __init__(self, size: int, interpolation: str, crop: tuple[int, int]) -> None:
        self.size = size
        self.interpolation = interpolation
        self.crop = crop

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def __call__(self, image: Any) -> Any:
        from PIL import Image

        w, h = self.resized_size(*image.size)
        if (w, h) != image.size:
            method = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
            image = image.resize((w, h), method)
        ch, cw = self.crop
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return image.crop((left, top, left + cw, top + ch)).convert("RGB")


def to_model_input(pixels: Any, split: Split, device: Any, dtype: Any) -> Any:
    """uint8 [N, H, W, 3] (numpy or torch, any device) -> normalized [N, 3, H, W] on ``device``.

    The same operations as torchvision's ``ToTensor`` then ``Normalize`` (float32 divide by 255,
    subtract the mean, divide by the std), done once for the batch on the device.
    """
    import torch

    if not isinstance(pixels, torch.Tensor):
        pixels = torch.from_numpy(pixels)
    cuda = torch.device(device).type == "cuda"
    if cuda and pixels.device.type == "cpu":
        pixels = pixels.pin_memory()  # page-locked, so the copy overlaps with the GPU's work
    x = pixels.to(device, non_blocking=cuda).permute(0, 3, 1, 2).float().div(255)
    if split.mean is not None and split.std is not None:
        mean = torch.as_tensor(split.mean, dtype=x.dtype, device=x.device)[None, :, None, None]
        std = torch.as_tensor(split.std, dtype=x.dtype, device=x.device)[None, :, None, None]
        x = x.sub(mean).div(std)
    return x.contiguous().to(dtype)


@dataclass(frozen=True)
class Jpeg:
    """A JPEG's bytes, left for the batched tensor decoder (nvJPEG on CUDA)."""

    data: bytes
    orientation: int  # EXIF orientation, 1 (upright) .. 8


class Cached:
    """A decode result that is already an embedding (from the image cache)."""

    __slots__ = ("feature",)

    def __init__(self, feature: Any) -> None:
        self.feature = feature


class Fresh:
    """Pixels whose embedding is to be stored under ``digest`` once computed."""

    __slots__ = ("digest", "pixels")

    def __init__(self, pixels: Any, digest: str) -> None:
        self.pixels = pixels
        self.digest = digest


def draft_size(split: Split | None) -> int | None:
    """The smallest side JPEG draft decoding may reduce an image to without going below the resize."""
    return split.resize if split is not None and split.resize is not None else None


class FileDecoder:
    """Reads one file and returns its payload for the model: run in a worker process or thread.

    Bytes are read through :mod:`zeroshot.image.reading` (regular files and URLs, never past the byte
    cap); a :class:`~zeroshot.image.images.MemoryInput`'s bytes take the same path from the cap on,
    and its PIL image or array the same conversion a decoded file gets (:func:`memory_image`).
    Payloads: uint8 HxWx3 numpy pixels (split transform), a float tensor (whole transform) or a
    :class:`Jpeg` (left for the batched decoder); wrapped in :class:`Fresh` with the content digest
    when an image cache is in use. Errors come back as the record's one-line message.
    """

    def __init__(
        self,
        preprocess: Any,
        split: Split | None,
        *,
        digest: bool = False,
        jpeg_draft: bool = False,
        raw_jpeg: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.split = split
        self.digest = digest
        self.draft = draft_size(split) if jpeg_draft else None
        self.raw_jpeg = raw_jpeg and split is not None and split.resize is not None

    def __call__(self, inp: Input) -> tuple[Any, str | None]:
        if inp.error is not None:
            return None, inp.error
        if isinstance(inp, VideoPart):  # sampled frames of a video: a list of (payload, error), one each
            return decode_part(inp, self.decode_image, self.max_pixels), None
        try:
            if isinstance(inp, MemoryInput):
                if inp.data is None:  # pixels: no bytes to key an image cache on, so never stored
                    return self.decode_image(memory_image(inp.image, self.max_pixels)), None
                data = inp.data
                if self.max_bytes and len(data) > self.max_bytes:
                    raise too_large(len(data), self.max_bytes)
            else:
                data = read_input(inp.path, self.max_bytes, self.timeout)
            digest = None
            if self.digest:  # of the bytes decoded here, so a file changed meanwhile is stored right
                from .imagecache import content_digest

                digest = content_digest(data)
            payload = self.decode_bytes(data)
        except ImageError as e:
            return None, str(e)
        return (Fresh(payload, digest) if digest is not None else payload), None

    def decode_bytes(self, data: bytes) -> Any:
        if self.raw_jpeg and data.startswith(JPEG_MAGIC):
            jpeg = _raw_jpeg(data, self.max_pixels, self.split.pil_stage if self.split else None)
            if jpeg is not None:
                return jpeg
        return self.decode_image(open_image(io.BytesIO(data), draft=self.draft, max_pixels=self.max_pixels))

    def decode_image(self, image: Any) -> Any:
        """An opened PIL image -> its payload (what a file's bytes become after decoding)."""
        try:
            if self.split is None:
                return self.preprocess(image)
            import numpy as np

            stage = self.split.pil_stage
            if isinstance(stage, StandardPilStage) and self.max_pixels:
                # A 2x5000000 strip is within the limit, but resizing its short side to the model's
                # size would make a 224x560000000 intermediate: refuse that too.
                w, h = stage.resized_size(*image.size)
                if w * h > self.max_pixels:
                    raise ImageError(
                        f"refused: {image.size[0]}x{image.size[1]} would be resized to {w}x{h} for the model, "
                        f"over the --max-pixels limit of {self.max_pixels:,}"
                    )
            out = stage(image)
            return np.array(out, dtype=np.uint8).reshape(out.size[1], out.size[0], 3)
        except ImageError:
            raise
        except Exception as e:  # an image Pillow decoded but the transform cannot take
            text = " ".join(str(e).split()) or type(e).__name__
            raise ImageError(f"cannot preprocess image ({text})") from None


def _raw_jpeg(data: bytes, max_pixels: int | None, stage: Any = None) -> Jpeg | None:
    """A JPEG the tensor decoder can take (3-channel or greyscale), with its EXIF orientation."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None  # CMYK/YCCK and the like: Pillow handles them
            if max_pixels and im.size[0] * im.size[1] > max_pixels:
                return None  # Pillow's path refuses it with the message
            if max_pixels and isinstance(stage, StandardPilStage):
                w, h = stage.resized_size(*im.size)
                if w * h > max_pixels:
                    return None  # likewise: its resize for the model would be too big
            orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        return None  # let the ordinary path produce the error message
    return Jpeg(data, orientation if 1 <= orientation <= 8 else 1)


# --- worker processes ---------------------------------------------------------------------------

_worker_decoder: FileDecoder | None = None
PARENT_POLL_S = 0.5


def _init_worker(decoder: FileDecoder, parent: int, parent_signal: bool) -> None:
    global _worker_decoder
    # Ctrl-C reaches the whole process group; the parent alone decides how the run ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # So does SIGTERM sent to the group (timeout, service managers). A worker forked from the
    # command line inherits its handler, which raises so that the parent's cleanup runs, and would
    # print that as a traceback; a worker has nothing to clean up and ends at once, saying nothing.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(parent, parent_signal)
    steady_heap()
    _worker_decoder = decoder


def steady_heap() -> None:
    """Keep memory this (worker) process frees for its next use, with glibc's malloc.

    A worker frees every frame's buffers before it decodes the next (a video's frame becomes its
    payload at once), and glibc hands each one back to the kernel, then faults the next in page by
    page: ten times the page faults and about 1.4 times the CPU for a 640x360 stream. Its dynamic
    thresholds would stop that once a large block is freed, but this pattern never gets them
    there; they are set here to where glibc would raise them (32 MB, 64 MB), which bounds what is
    kept. Elsewhere (another C library, no ``mallopt``) nothing changes.
    """
    if sys.platform != "linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD: free memory kept at the top of the heap
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: blocks below it come from the heap
    except (OSError, AttributeError):
        pass


def die_with_parent(parent: int, parent_signal: bool = True) -> None:
    """End this (worker) process when ``parent`` ends, however it ends (SIGKILL and the OOM killer too).

    On Linux the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``; only when the
    pool was started from the parent's main thread, since the kernel ties it to the thread that
    forked). Everywhere, a daemon thread also checks every half second that the parent is still
    this process's parent (an orphan is re-parented), so a worker never outlives its run.
    """
    if parent_signal and sys.platform == "linux":
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="zeroshot-parent-watch", daemon=True).start()


def decode_in_worker(inputs: list[Input]) -> list[tuple[Any, str | None]]:
    decoder = _worker_decoder
    assert decoder is not None
    return [decoder(inp) for inp in inputs]


def decode_item(decoder: FileDecoder, item: tuple[str, bytes | None, str | None]) -> tuple[Any, str | None]:
    """The Ray engine's unit: one (path, bytes or None, known error) item -> (payload, None) or (None, message)."""
    path, data, known_error = item
    if known_error:
        return None, str(known_error)
    try:
        if data is None:
            data = read_input(path, decoder.max_bytes, decoder.timeout)
        elif decoder.max_bytes and len(data) > decoder.max_bytes:  # Ray's reader has read it whole
            raise too_large(len(data), decoder.max_bytes)
        return decoder.decode_bytes(data), None
    except ImageError as e:
        return None, str(e)


def decode_items_in_worker(items: list[tuple[str, bytes | None, str | None]]) -> list[tuple[Any, str | None]]:
    """In a forked decoding process: the decoder the pool was started with."""
    decoder = _worker_decoder
    assert decoder is not None
    return [decode_item(decoder, item) for item in items]


def process_pool(decoder: FileDecoder, workers: int) -> Any:
    """A pool of ``workers`` forked processes, each holding ``decoder``.

    Forked, like PyTorch's DataLoader workers: they start in milliseconds, need no re-import of the
    caller's ``__main__`` (so library users need no ``if __name__ == "__main__"`` guard), and run
    only Pillow and numpy code (never torch or CUDA, which must not be used in a forked child):
    :func:`processes_usable` keeps transforms that need torch on threads.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("fork")
    main = threading.current_thread() is threading.main_thread()
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(decoder, os.getpid(), main)
    )


def processes_usable(decoder: FileDecoder) -> bool:
    """Whether ``decoder`` may run in forked worker processes (Linux, Pillow-only work)."""
    import multiprocessing as mp

    if sys.platform != "linux" or "fork" not in mp.get_all_start_methods():
        return False  # macOS and Windows: fork is unsafe or missing; decode in threads
    return isinstance(decoder.split.pil_stage if decoder.split else None, (StandardPilStage, SquashPilStage))


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
