"""Finding inputs and decoding images.

Inputs stream: directories are walked lazily (sorted within each folder), so a folder of 100k
files starts producing records at once and nothing holds the whole list. Decoding honours EXIF
orientation, then hands the image to the model's own open_clip preprocessing unchanged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

log = logging.getLogger("zeroshot")

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff",
        ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k", ".avif", ".heic", ".heif",
    }
)  # fmt: skip


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Input:
    """One input path, as it will appear in the output record."""

    path: str
    error: str | None = None  # known before decoding: missing file, unreadable folder


def walk_images(root: str, seen: set[tuple[int, int]]) -> Iterator[Input]:
    """Image files under ``root``, depth first, names sorted; symlinked folders once each.

    A folder that cannot be listed becomes one input carrying the error, so it is reported.
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
            is_dir = entry.is_dir()  # follows symlinks
        except OSError:
            is_dir = False
        if is_dir:
            yield from walk_images(entry.path, seen)
        elif is_image_name(entry.name):
            yield Input(entry.path)


def iter_inputs(inputs: Iterable[str], stdin: IO[str] | None = None) -> Iterator[Input]:
    """Expand the command line's inputs in order: files as given, folders recursively, ``-`` = stdin.

    From stdin, each line is one path (a trailing newline and carriage return are removed).
    """
    for item in inputs:
        if item == "-":
            if stdin is None:
                continue
            for line in stdin:
                path = line.rstrip("\n").rstrip("\r")
                if path:
                    yield from _expand(path)
        else:
            yield from _expand(item)


def _expand(path: str) -> Iterator[Input]:
    if os.path.isdir(path):
        found = False
        for inp in walk_images(path, set()):
            found = True
            yield inp
        if not found:  # every input on the command line gets a record, an empty folder too
            yield Input(path, error="no image files in this folder")
    else:
        yield Input(path, error=None if os.path.lexists(path) else "no such file")


class ImageError(Exception):
    """An input that cannot be turned into an image; the message is the record's ``error``."""


def os_error(e: OSError) -> ImageError:
    """The record's message for a file that cannot be opened or read."""
    if isinstance(e, FileNotFoundError):
        return ImageError("no such file")
    if isinstance(e, IsADirectoryError):
        return ImageError("is a directory")
    if isinstance(e, PermissionError):
        return ImageError("permission denied")
    return ImageError(f"cannot read ({e.strerror or e})")


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
DEFAULT_MAX_PIXELS = 178_956_970


def check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels and width * height > max_pixels:
        raise ImageError(
            f"refused: {width}x{height} is {width * height:,} pixels, over the --max-pixels limit of {max_pixels:,}"
        )


def open_image(path: str | IO[bytes], draft: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Any:
    """Decode a file (a path or a binary file object) fully, apply its EXIF orientation, return it.

    ``draft`` (opt-in, changes pixels): let a JPEG decoder reduce the image by 2, 4 or 8 while
    decoding (libjpeg's DCT scaling), as long as both sides stay at least ``draft`` pixels.
    ``max_pixels`` (None or 0: no limit): images whose header declares more pixels are refused
    before they are decoded (a decompression bomb is a few bytes claiming gigapixels).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # the limit is ours (max_pixels), applied below to every format
    try:
        with Image.open(path) as im:
            check_pixels(im.size[0], im.size[1], max_pixels)
            if draft is not None and im.format == "JPEG":
                im.draft(im.mode, (draft, draft))
            im.load()
            oriented = ImageOps.exif_transpose(im)
            if oriented is im:
                oriented = im.copy()
            return to_8bit(oriented)
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


def load_tensor(path: str | IO[bytes], preprocess: Any) -> Any:
    """The model-ready tensor for one file, or :class:`ImageError`."""
    image = open_image(path)
    try:
        return preprocess(image)
    except Exception as e:  # an image Pillow decoded but the transform cannot take
        raise ImageError(f"cannot preprocess image ({' '.join(str(e).split()) or type(e).__name__})") from None
