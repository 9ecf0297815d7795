"""Finding inputs and decoding images.

Inputs stream: directories are walked lazily (sorted within each folder), so a folder of 100k
files starts producing records at once and nothing holds the whole list. Decoding honours EXIF
orientation, then hands the image to the model's own open_clip preprocessing unchanged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from ..base import options
from ..base.errors import ImageError, os_error  # here too: where the decoders' callers look for them

log = logging.getLogger("zeroshot")

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff",
        ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".avif", ".heic", ".heif",
    }
)  # fmt: skip


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv", ".flv",
     ".3gp", ".ogv"}
)  # fmt: skip
INPUT_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS  # what a folder's walk picks up
ANIMATED_EXTENSIONS = frozenset({".gif", ".webp"})  # images, or videos when asked (--animated-as-video)


def is_video_name(name: str, animated: bool = False) -> bool:
    ext = os.path.splitext(name)[1].lower()
    return ext in VIDEO_EXTENSIONS or (animated and ext in ANIMATED_EXTENSIONS)


@dataclass(frozen=True)
class Input:
    """One input path, as it will appear in the output record."""

    path: str
    error: str | None = None  # known before decoding: missing file, unreadable folder


@dataclass(frozen=True)
class Pause(Input):
    """Not an input: a live stream (paths from stdin) has nothing more for now. The image core
    finishes what it holds when it meets one, so the records of the paths already read come out
    while the producer is still writing (``inotifywait -m ... | zeroshot classify -``). Only
    :func:`iter_inputs` with ``live=True`` makes them; they never become records."""


PAUSE = Pause("")


@dataclass(frozen=True)
class MemoryInput(Input):
    """One image handed over in memory (the library's and the server's inputs): ``path`` is only the
    name its record shows, never opened or fetched. ``data``: a file's encoded bytes, decoded as the
    file would be, under the same caps (:class:`~zeroshot.image.decoding.FileDecoder`); else
    ``image``: a PIL image or a uint8 numpy array (HxW grey, HxWx3 RGB, HxWx4 RGBA), whose pixels go
    through the same conversion a decoded file's do. Picklable, so it travels to decoding workers;
    compared and hashed by name and error only (an array has no truth value)."""

    data: bytes | None = field(default=None, repr=False, compare=False)
    image: Any = field(default=None, repr=False, compare=False)


MEMORY_KINDS = "a path, encoded bytes, a PIL image or a numpy array"


def is_in_memory(obj: Any) -> bool:
    """Whether ``obj`` is an image held in memory (encoded bytes, a PIL image, a numpy array)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return True
    kind = type(obj)
    module = getattr(kind, "__module__", "") or ""
    if module.startswith("numpy") and kind.__name__ == "ndarray":
        return True
    if module.startswith("PIL."):  # imported only when one is seen: Pillow stays lazy
        from PIL import Image

        return isinstance(obj, Image.Image)
    return False


def memory_input(path: str, obj: Any) -> MemoryInput:
    """``obj`` (see :func:`is_in_memory`) as an input named ``path``. A PIL image is loaded here (a
    lazily opened one would otherwise load while it is pickled for a worker, where a broken file
    could not become its record), and an array of the wrong kind is refused here: both come out as
    an input carrying the record's one-line error."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return MemoryInput(path, data=bytes(obj))
    try:
        if type(obj).__name__ == "ndarray":
            _array_mode(obj)
        elif is_in_memory(obj):
            with _pillow_errors():
                obj.load()
        else:
            raise ImageError(f"not an image: {type(obj).__name__} (give {MEMORY_KINDS})")
    except ImageError as e:
        return MemoryInput(path, error=str(e))
    return MemoryInput(path, image=obj)


def _array_mode(array: Any) -> str:
    """The PIL mode of a uint8 HxW / HxWx3 / HxWx4 array; :class:`ImageError` for any other."""
    import numpy as np

    shape = tuple(array.shape)
    modes = {1: "L", 3: "RGB", 4: "RGBA"}  # HxW is one channel; HxWx2 (grey + alpha?) is refused, not guessed
    channels = 1 if len(shape) == 2 else (shape[2] if len(shape) == 3 and shape[2] != 1 else 0)
    if array.dtype != np.uint8 or channels not in modes:
        raise ImageError(
            f"unsupported array: {array.dtype} of shape {shape} (give uint8 HxW grey, HxWx3 RGB or HxWx4 RGBA)"
        )
    if not shape[0] or not shape[1]:
        raise ImageError(f"empty image ({shape[1]}x{shape[0]} pixels)")
    return modes[channels]


def memory_image(image: Any, max_pixels: int | None = None) -> Any:
    """A PIL image or numpy array given in memory -> the PIL image a file's bytes would decode to:
    its size checked against ``max_pixels``, high bit depths brought to 8 bits (:func:`to_8bit`).
    No EXIF orientation: the pixels are the caller's, as they are. The caller's image is not changed."""
    from PIL import Image

    if type(image).__name__ == "ndarray" and hasattr(image, "dtype"):
        import numpy as np

        mode = _array_mode(image)
        check_pixels(image.shape[1], image.shape[0], max_pixels)
        with _pillow_errors():
            return Image.fromarray(np.ascontiguousarray(image)).convert(mode)
    if not isinstance(image, Image.Image):
        raise ImageError(f"not an image: {type(image).__name__} (give {MEMORY_KINDS})")
    check_pixels(image.size[0], image.size[1], max_pixels)
    with _pillow_errors():
        image.load()
        return to_8bit(image)


def walk_images(root: str, seen: set[tuple[int, int]]) -> Iterator[Input]:
    """Image and video files under ``root``, depth first, names sorted; symlinked folders once each.

    A folder that cannot be listed becomes one input carrying the error, so it is reported. An
    entry with an image name that is not a regular file (a FIFO, a device, a socket) is an input
    carrying that error, decided on ``stat``: nothing is opened here.
    """
    try:
        st = os.stat(root)
    except OSError:
        return
    ident = (st.st_dev, st.st_ino)
    if ident in seen:  # a symlink loop or a folder reached twice
        return
    seen.add(ident)
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        yield Input(root, error=f"cannot list folder ({e.strerror or e})")
        return
    for entry in entries:
        try:
            # The directory entry's own type answers these without a stat call (symlinks followed).
            is_dir, is_file = entry.is_dir(), entry.is_file()
        except OSError:
            is_dir = is_file = False
        if is_dir:
            yield from walk_images(entry.path, seen)
        elif os.path.splitext(entry.name)[1].lower() in INPUT_EXTENSIONS:
            yield Input(entry.path, error=None if is_file else _special_file_problem(entry.path))


def iter_inputs(
    inputs: Iterable[str], stdin: IO[Any] | None = None, *, null: bool = False, live: bool = False
) -> Iterator[Input]:
    """Expand the command line's inputs in order: files as given, folders recursively, ``-`` = stdin.

    From stdin, each line is one path (a trailing newline and carriage return are removed); with
    ``null``, paths are separated by NUL bytes instead (``find -print0``), so any name can pass.
    URLs (``http://``, ``https://``) are inputs as they are, fetched when decoded. Without
    ``stdin``, ``-`` is a file name like any other. With ``live``,
    a :data:`PAUSE` comes whenever stdin has nothing more to read for now (see :class:`Pause`).
    """
    for item in inputs:
        if item == "-" and stdin is not None:
            for path in stdin_paths(stdin, null=null, live=live):
                if isinstance(path, Input):
                    yield path
                elif path:
                    yield from _expand(path)
        else:
            yield from _expand(item)


def count_inputs(inputs: Iterable[str], found: Callable[[int], None] | None = None, every: int = 500) -> int:
    """How many records :func:`iter_inputs` will give for these command-line inputs, stdin (``-``)
    left out: the same walk, keeping nothing but the count. ``found`` hears the count so far."""
    n = 0
    for item in inputs:
        if item == "-":
            continue
        for _ in _expand(item):
            n += 1
            if found is not None and n % every == 0:
                found(n)
    return n


# A path longer than this without a separator is not a path (Linux's PATH_MAX is 4,096 bytes):
# reading stops buffering there, so a stream with no separator cannot take unbounded memory.
MAX_PATH_BYTES = 65_536


def stdin_paths(stdin: IO[Any], *, null: bool = False, live: bool = False) -> Iterator[str | Input]:
    """Paths from stdin as the OS names them (bytes decoded like ``os.fsdecode``), streamed: each
    path as soon as its separator arrives. With ``live``, :data:`PAUSE` whenever nothing more can
    be read at once (the producer is slow, or waits for something).

    A run of more than :data:`MAX_PATH_BYTES` without a separator becomes one error input.
    """
    raw = getattr(stdin, "buffer", None)
    if raw is None:  # a text stream with no bytes underneath (tests, library callers)
        text = stdin.read()
        parts = text.split("\0") if null else text.splitlines()
        yield from (p if null else p.rstrip("\r") for p in parts)
        return
    sep = b"\0" if null else b"\n"
    read = _live_reader(raw) if live else getattr(raw, "read1", raw.read)
    buf = b""
    skipping = False
    while True:
        block = read(1 << 16)
        if block is None:  # nothing to read yet
            yield PAUSE
            continue
        if not block:
            break
        buf += block
        *done, buf = buf.split(sep)
        for part in done:
            if skipping:
                skipping = False
                continue
            yield os.fsdecode(part if null else part.rstrip(b"\r"))
        if len(buf) > MAX_PATH_BYTES:
            if not skipping:
                shown = os.fsdecode(buf[:60]) + "..."
                yield Input(shown, error=f"not a path: over {MAX_PATH_BYTES:,} bytes with no separator")
            skipping, buf = True, b""
    if buf and not skipping:
        yield os.fsdecode(buf if null else buf.rstrip(b"\r"))


def _live_reader(raw: Any) -> Callable[[int], bytes | None]:
    """``read(n)`` on stdin's descriptor that returns None, once, instead of blocking when nothing
    has arrived within a moment (then it blocks until something does). Where the descriptor cannot
    be polled (no descriptor, no ``select`` for it), the plain blocking read."""
    import select

    try:
        fd = raw.fileno()
        select.select([fd], [], [], 0)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return getattr(raw, "read1", raw.read)
    # Nothing else reads stdin in a run, so its buffer is empty: the descriptor is read directly.
    paused = False

    def read(n: int) -> bytes | None:
        nonlocal paused
        # A short grace period keeps a producer that writes in bursts from splitting every batch.
        if not paused and not select.select([fd], [], [], 0.05)[0]:
            paused = True
            return None
        paused = False
        return os.read(fd, n)

    return read


def _special_file_problem(path: str) -> str:
    """Why an entry that is neither a folder nor a regular file gets no decoding: its kind, or gone."""
    from .reading import kind_problem

    try:
        return kind_problem(os.stat(path).st_mode) or "not a regular file"
    except OSError:
        return "no such file"  # a dangling symlink


def _expand(path: str) -> Iterator[Input]:
    from .reading import is_url, kind_problem

    if is_url(path):
        yield Input(path)
        return
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        yield Input(path, error="no such file" if isinstance(e, NotADirectoryError) else str(os_error(e)))
        return
    if stat.S_ISDIR(mode):
        found = False
        for inp in walk_images(path, set()):
            found = True
            yield inp
        if not found:  # every input on the command line gets a record, an empty folder too
            yield Input(path, error="no image files in this folder")
    else:
        yield Input(path, error=kind_problem(mode))


def to_8bit(im: Any) -> Any:
    """High-bit-depth greyscale (16-bit, 32-bit int, float) as 8-bit 'L', scaled by its type's range.

    Pillow's own ``convert("RGB")`` clips these to 0..255, which turns a 16-bit PNG white and a
    0..1 float image black. 16-bit data is divided by 257 (65535 -> 255), so a 16-bit image made
    from an 8-bit one comes back exactly; 32-bit ints are read as 16-bit data unless they exceed
    it; floats in 0..1 are scaled by 255. Other modes are returned unchanged.
    """
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    import numpy as np
    from PIL import Image

    arr = np.asarray(im, dtype=np.float64)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(arr.max()) if arr.size else 0.0
    if im.mode == "F":
        scale = 255.0 if top <= 1.0 else 1.0
    elif im.mode.startswith("I;16") or 255 < top <= 65535:
        scale = 1 / 257
    elif top <= 255:
        scale = 1.0
    else:
        scale = 255.0 / top
    return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8), "L")


# Pillow's own limit raises past 2x its MAX_IMAGE_PIXELS (89.5M); the same 179M pixels is the
# default here (0.5 GB as RGB), checked on the header before any pixel memory is allocated.
DEFAULT_MAX_PIXELS = options.DEFAULT_MAX_PIXELS


def check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels and width * height > max_pixels:
        raise ImageError(
            f"refused: {width}x{height} is {width * height:,} pixels, over the --max-pixels limit of {max_pixels:,}"
        )


def open_image(
    source: str | IO[bytes],
    draft: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
) -> Any:
    """Decode an input (a path, a URL or a binary file object) fully, apply its EXIF orientation.

    ``draft`` (opt-in, changes pixels): let a JPEG decoder reduce the image by 2, 4 or 8 while
    decoding (libjpeg's DCT scaling), as long as both sides stay at least ``draft`` pixels.
    ``max_pixels`` (None or 0: no limit): images whose header declares more pixels are refused
    before they are decoded (a decompression bomb is a few bytes claiming gigapixels).
    ``max_bytes``: the byte cap for a path or URL (None: the default cap; 0: none), see
    :mod:`zeroshot.image.reading`, which reads it (never a blocking open, never past the cap).
    """
    if isinstance(source, (str, os.PathLike)):
        from .reading import DEFAULT_MAX_BYTES, read_input

        data = read_input(os.fspath(source), DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
        source = io.BytesIO(data)
    if isinstance(source, io.BytesIO) and not source.getbuffer().nbytes:
        raise ImageError("empty file (0 bytes)")
    register_plugins()
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = None  # the limit is ours (max_pixels), applied below to every format
    with _pillow_errors(), Image.open(source) as im:
        check_pixels(im.size[0], im.size[1], max_pixels)
        if draft is not None and im.format == "JPEG":
            im.draft(im.mode, (draft, draft))
        im.load()
        oriented = ImageOps.exif_transpose(im)
        if oriented is im:
            oriented = im.copy()
        return to_8bit(oriented)


@contextlib.contextmanager
def _pillow_errors() -> Iterator[None]:
    """Pillow's (and the OS's) exceptions while an image is opened or loaded, as one-line
    :class:`ImageError` messages: the same for a file's bytes and an image given in memory."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except ImageError:
        raise
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise os_error(e) from None
    except MemoryError:
        raise ImageError("out of memory decoding this image") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"refused: {e}") from None
    except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error...
        text = " ".join(str(e).split()) or type(e).__name__
        if "truncated" in text.lower():
            raise ImageError(f"truncated image ({text})") from None
        raise ImageError(f"cannot decode image ({text})") from None


def load_tensor(source: str | IO[bytes], preprocess: Any, max_bytes: int | None = None) -> Any:
    """The model-ready tensor for one input, or :class:`ImageError`."""
    image = open_image(source, max_bytes=max_bytes)
    try:
        return preprocess(image)
    except Exception as e:  # an image Pillow decoded but the transform cannot take
        raise ImageError(f"cannot preprocess image ({' '.join(str(e).split()) or type(e).__name__})") from None


_plugins_registered = False


def register_plugins() -> None:
    """Teach Pillow HEIC/HEIF (pillow-heif); Pillow reads AVIF itself (11.3+). Idempotent.

    pillow-heif applies a HEIF file's own rotation and mirroring (its ``irot``/``imir`` boxes, which
    is where iPhones record orientation) and resets the EXIF orientation it reports to 1, so
    :func:`open_image`'s ``exif_transpose`` never turns such an image twice.
    """
    global _plugins_registered
    if _plugins_registered:
        return
    _plugins_registered = True
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # an install without it still reads every other format
        log.debug("pillow-heif is not installed: HEIC/HEIF files cannot be read")
        return
    register_heif_opener()
