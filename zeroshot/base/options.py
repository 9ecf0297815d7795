"""The options a run takes, defined once for every face: the command line, the library, the server.

Each :class:`Option` is one choice: its name (the library's keyword argument and the server's
request field), its command-line flags, its type, default, bounds and help. The CLI declares its
Typer options from this table (:mod:`zeroshot.cli.common`), the library's keyword arguments carry
the same names, and every value, whichever face it came through, is checked by
:meth:`Option.check` (the run's option objects, such as
:class:`~zeroshot.image.video.VideoOptions`, check their fields when they are made). So the library
cannot accept a value the command line refuses (``every=-1`` once looped forever).

Messages name an option the way the face in use spells it (:func:`named`): ``--every`` on the
command line, ``every=`` in the library. The CLI and the server set their face for the length of a
command or of the process (:func:`face`); the library's is the default.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

# Pillow's own decompression-bomb limit: larger images are refused before decoding.
DEFAULT_MAX_PIXELS = 178_956_970
# The pixel cap as 8-bit RGB is 536,870,910 bytes: 512 MiB is the largest file an uncompressed image
# within that cap can be (BMP, PPM, TIFF), so the default byte cap refuses no image the pixel cap
# accepts, while a 50 GB file named .jpg is refused unread.
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
# Videos are read as a stream through a bounded buffer: 64 GiB is a phone's hours of 4K, well past
# what the image cap (512 MiB, a phone's minute) would allow.
DEFAULT_MAX_VIDEO_BYTES = 64 * 1024**3
DEFAULT_TIMEOUT = 20.0

FACES = ("library", "cli", "server")
_face = "library"


@contextlib.contextmanager
def face(name: str) -> Iterator[None]:
    """Word messages for ``name``'s users (``cli``: flags; ``server``: request fields) meanwhile.
    Process-wide on purpose: decoding workers forked meanwhile word their records the same way."""
    global _face
    if name not in FACES:
        raise ValueError(f"unknown face {name!r}")
    before, _face = _face, name
    try:
        yield
    finally:
        _face = before


def current_face() -> str:
    return _face


def flag_of(name: str) -> str:
    """The command-line flag of an option name (``max_bytes`` -> ``--max-bytes``)."""
    option = OPTIONS.get(name)
    return option.flags[0] if option is not None else "--" + name.replace("_", "-")


_MISSING = object()


def named(name: str, value: Any = _MISSING) -> str:
    """An option (with a value, when given) as the face in use writes it: ``--every 0`` on the
    command line, ``every=0`` in the library, ``"every": 0`` in a server request."""
    if _face == "cli":
        return flag_of(name) if value is _MISSING else f"{flag_of(name)} {_shown(value)}"
    if _face == "server":
        return f'"{name}"' if value is _MISSING else f'"{name}": {_shown(value, quote=True)}'
    return name if value is _MISSING else f"{name}={value!r}"


def worded(*, cli: str, library: str, server: str | None = None) -> str:
    """A hint that differs by face: what to type (``give --labels FILE``) or what to pass."""
    if _face == "cli":
        return cli
    if _face == "server":
        return server if server is not None else library
    return library


def _shown(value: Any, quote: bool = False) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and quote:
        return f'"{value}"'
    return str(value)


@dataclass(frozen=True)
class Option:
    """One option: see the module's text. None is every option's "not given" but a switch's (a
    ``bool``): its ``default`` then applies, or a rule where that is None too (:func:`video_cap`)."""

    name: str
    flags: tuple[str, ...]
    help: str
    kind: type
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None

    def check(self, value: Any) -> Any:
        """``value`` if this option takes it, else :class:`UsageError` worded for the face in use."""
        if value is None and self.kind is not bool:
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                raise UsageError(f"{named(self.name)} must be True or False, not {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise UsageError(f"{named(self.name)} must be a string, not {value!r}")
            return value
        number = isinstance(value, int) if self.kind is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not number:
            raise UsageError(f"{named(self.name)} must be {self._expected()}, not {value!r}")
        if self.kind is float and not math.isfinite(value):
            raise UsageError(f"{named(self.name)} must be a finite number, not {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise UsageError(f"{named(self.name)} must be at least {self.minimum:g}, not {_shown(value)}")
        if self.maximum is not None and value > self.maximum:
            raise UsageError(f"{named(self.name)} must be at most {self.maximum:g}, not {_shown(value)}")
        return value

    def _expected(self) -> str:
        what = {int: "a whole number", float: "a number", bool: "True or False", str: "a string"}[self.kind]
        if self.minimum is not None and self.maximum is not None:
            return f"{what} from {self.minimum:g} to {self.maximum:g}"
        if self.minimum is not None:
            return f"{what} of at least {self.minimum:g}"
        return what


def _table(*options: Option) -> dict[str, Option]:
    return {o.name: o for o in options}


OPTIONS = _table(
    Option("top_k", ("--top-k", "-k"), "Labels per record (at most the classes).", int, 5, minimum=1),
    Option("batch_size", ("--batch-size", "-b"), "Images per model call (default: 32; 256 on CUDA).", int,
           minimum=1),
    Option("workers", ("--workers",), "Decoding worker processes (default: a quarter of the cores on CPU, all but "
           "one with CUDA; 0: decode in the main process).", int, minimum=0),
    Option("jpeg_draft", ("--jpeg-draft",), "Let the JPEG decoder shrink large images by 2-8x while decoding "
           "(faster; changes pixels slightly: see the manual).", bool, False),
    Option("max_pixels", ("--max-pixels",), "Refuse images whose header declares more pixels than this (default "
           f"{DEFAULT_MAX_PIXELS}, Pillow's own limit; 0: no limit). Checked before decoding.", int,
           DEFAULT_MAX_PIXELS, minimum=0),
    Option("max_bytes", ("--max-bytes",), f"Refuse inputs larger than this many bytes (default {DEFAULT_MAX_BYTES} "
           "= 512 MiB, the largest an uncompressed image within --max-pixels can be; 0: no limit). Checked on the "
           "size, and enforced while reading.", int, minimum=0),
    Option("timeout", ("--timeout",), "For http(s):// inputs: seconds to connect and between reads (a download "
           "gets 6x this in all).", float, DEFAULT_TIMEOUT, minimum=0.1),
    Option("every", ("--every",), "Videos: sample a frame every this many seconds of presentation time (default "
           "1.0); each sampled frame is one record with its time and frame number.", float, 1.0, minimum=0.001),
    Option("max_frames", ("--max-frames",), "Videos: at most this many sampled frames per video.", int, minimum=1),
    Option("per_video", ("--per-video",), "Videos: one record per video, its frames' probabilities averaged, with "
           "the times the top label is strongest (and, with --multi-label, the segments where each label holds).",
           bool, False),
    Option("animated_as_video", ("--animated-as-video",), "Sample the frames of animated GIF and WebP files as "
           "videos.", bool, False),
    Option("max_video_bytes", ("--max-video-bytes",), "Refuse video files larger than this (default: --max-bytes "
           "when given, else 64 GiB; 0: no limit). Videos are read as a stream, so memory does not grow with their "
           "size; --max-pixels applies to their frames.", int, minimum=0),
    Option("multi_label", ("--multi-label",), "Decide each label on its own (images holding several things): "
           "records list every label scoring at least --threshold under 'labels' (see the manual).", bool, False),
    Option("threshold", ("--threshold",), "With --multi-label: the per-label score that counts as present "
           "(default 0.5).", float, minimum=0.0, maximum=1.0),
    Option("background", ("--background",), "With --multi-label on CLIP models: the neutral word each label is "
           "weighed against (default 'object').", str),
    Option("min_score", ("--min-score",), 'Below this top score the record says "label": null (none of these); '
           "its top_k stays. Not with --multi-label (--threshold decides there).", float, minimum=0.0, maximum=1.0),
)  # fmt: skip


def check(**values: Any) -> dict[str, Any]:
    """Each ``name=value`` checked by its option (see :meth:`Option.check`), None (not given) turned
    into the option's default; returns them."""
    out = {}
    for name, value in values.items():
        option = OPTIONS[name]
        value = option.check(value)
        out[name] = option.default if value is None else value
    return out


def video_cap(max_bytes: int | None, max_video_bytes: int | None) -> tuple[int, str]:
    """The byte cap for video files and the option it comes from: ``max_video_bytes`` when given;
    else ``max_bytes`` when given (it applies to every input); else the video default (64 GiB: a
    video is read as a stream, and the image cap, 512 MiB, would refuse a phone's five minutes of 4K)."""
    if max_video_bytes is not None:
        return max_video_bytes, "max_video_bytes"
    if max_bytes is not None:
        return max_bytes, "max_bytes"
    return DEFAULT_MAX_VIDEO_BYTES, "max_video_bytes"
