"""Video files as inputs: each sampled frame becomes one input of its own (:class:`FrameInput`).

A video is planned before anything is decoded (:func:`plan`): its packets are read without
decoding (PyAV demuxing, FFmpeg inside the wheel), which gives every frame's presentation time
and the keyframes. A frame is sampled every ``every`` seconds of presentation time: for each
time ``t = 0, every, 2 * every, ...`` the frame on screen at ``t`` (the last one that starts at or
before it), each frame once, at most ``max_frames``. Times and frame numbers come from the
packets, so they are exact for a variable frame rate too: ``time`` is seconds from the stream's
start, ``frame`` the frame's index in presentation order (``ffmpeg -vf select='eq(n,FRAME)'``).

Decoding (:func:`zeroshot.image.videodecode.decode_part`, in the same worker processes as
images) takes a run of sampled frames that share a keyframe, seeks to that keyframe and decodes
forward only as far as the last of them: groups of pictures with no sampled frame are never
decoded. The stream's rotation (its display matrix) is applied, then the model's own
preprocessing, as for an image.

FFmpeg never opens a video by its name: the file is opened here (:class:`Video`, through
:func:`zeroshot.image.reading.open_file`: a regular file, never a blocking open, the byte cap held
while FFmpeg reads) and FFmpeg reads that open file, so a name such as ``concat:a.mp4|b.mp4`` is
the file it names, and FFmpeg opens no other file or protocol on its own. A URL's video is
downloaded to a temporary file first, a block at a time.

Animated GIF and WebP are images unless ``animated`` is asked for; then their frames are sampled
the same way, with the times their frame durations give (Pillow decodes them).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..base import options
from ..base.options import named
from .images import ANIMATED_EXTENSIONS, ImageError, Input, Pause, check_pixels, is_video_name

# FFmpeg reads a video as a stream, and a URL's goes to its temporary file a block at a time: memory
# grows with the packets planned (MAX_PACKETS), never with the bytes, so the cap is one of disk.
DEFAULT_MAX_VIDEO_BYTES = options.DEFAULT_MAX_VIDEO_BYTES  # why 64 GiB: zeroshot.base.options
# Sampled frames decoded in one pass of a worker. Each becomes its payload as it is decoded, so a
# worker holds a part's payloads (16 x 224 x 224 x 3 bytes, 2.4 MB, at the usual model size), one
# decoded frame, and the decoder's reference frames.
PART_FRAMES = 16
MAX_PACKETS = 20_000_000  # packets planned per video (over 7 days at 30 frames a second)


@dataclass(frozen=True)
class FrameInput(Input):
    """One sampled frame of a video: its record carries ``time`` and ``frame`` after ``path``."""

    time: float = 0.0  # seconds from the stream's start
    frame: int = 0  # index in presentation order
    pts: int = 0  # presentation timestamp, in the stream's time base (Pillow: the frame's index)
    start: int | None = None  # the keyframe to seek to before decoding (None: from the start)
    source: str = ""  # the local file to decode (a URL's is a downloaded copy)
    stream: int = 0  # the video stream's index in the container; -1: frames of an animated image
    max_bytes: int = 0  # the byte cap the file is read within (0: none), and the option it came from
    cap_option: str = ""


@dataclass(frozen=True)
class VideoPart(Input):
    """Sampled frames one worker decodes in one pass (the same file and keyframe)."""

    frames: tuple[FrameInput, ...] = ()


@dataclass(frozen=True)
class VideoOptions:
    """``every``, ``max_frames``, ``animated_as_video`` and the byte cap for videos, checked when
    made by the options' one definition (:mod:`zeroshot.base.options`), whichever face made them."""

    every: float = 1.0
    max_frames: int | None = None
    animated: bool = False
    max_bytes: int | None = DEFAULT_MAX_VIDEO_BYTES  # 0 or None: no cap
    cap_option: str = ""  # the option the byte cap came from, as messages name it (default: max_video_bytes)
    max_pixels: int | None = None
    timeout: float = 20.0

    def __post_init__(self) -> None:
        for name, value in (("every", self.every), ("max_frames", self.max_frames),
                            ("animated_as_video", self.animated), ("max_video_bytes", self.max_bytes),
                            ("max_pixels", self.max_pixels), ("timeout", self.timeout)):  # fmt: skip
            options.OPTIONS[name].check(value)
        if not self.cap_option:
            object.__setattr__(self, "cap_option", named("max_video_bytes"))


def is_part(inp: Input) -> bool:
    return isinstance(inp, VideoPart)


def with_time(record: dict[str, Any], inp: Input) -> dict[str, Any]:
    """A frame's record: ``time`` and ``frame`` right after ``path``; other records unchanged."""
    if not isinstance(inp, FrameInput):
        return record
    return {"path": record["path"], "time": inp.time, "frame": inp.frame,
            **{k: v for k, v in record.items() if k != "path"}}  # fmt: skip


def unit_key(record: dict[str, Any]) -> str:
    """What one record stands for: its path, and a frame's time (``clip.mp4#t=12.5``)."""
    time = record.get("time")
    return record["path"] if time is None or time == -1.0 else f"{record['path']}#t={time}"


def frame_row(inp: Input) -> dict[str, Any]:
    """An input as a Ray dataset row (typed columns: -1 and "" where an image has no value)."""
    f = inp if isinstance(inp, FrameInput) else None
    return {"path": inp.path, "error": inp.error or "", "time": f.time if f else -1.0, "frame": f.frame if f else -1,
            "pts": f.pts if f else 0, "start": "" if f is None or f.start is None else str(f.start),
            "source": f.source if f else "", "stream": f.stream if f else 0, "max_bytes": f.max_bytes if f else 0,
            "cap_option": f.cap_option if f else ""}  # fmt: skip


def row_input(row: dict[str, Any]) -> Input:
    """A Ray dataset row (:func:`frame_row`) back as the input it was."""
    path, error = str(row["path"]), str(row.get("error") or "") or None
    if int(row.get("frame", -1)) < 0:
        return Input(path, error)
    start = str(row["start"])
    return FrameInput(
        path,
        error,
        time=float(row["time"]),
        frame=int(row["frame"]),
        pts=int(row["pts"]),
        start=int(start) if start else None,
        source=str(row["source"]),
        stream=int(row["stream"]),
        max_bytes=int(row.get("max_bytes") or 0),
        cap_option=str(row.get("cap_option") or ""),
    )


# --- planning -----------------------------------------------------------------------------------


def expand(inputs: Iterable[Input], opts: VideoOptions, *, urls: bool = True) -> Iterator[Input]:
    """The inputs with every video replaced by its sampled frames (or one error input). Without
    ``urls``, a video named by URL stays one input (a count must not download it)."""
    from .reading import is_url

    for inp in inputs:
        if isinstance(inp, Pause) or inp.error is not None or not _is_video(inp.path, opts.animated):
            yield inp
            continue
        if not urls and is_url(inp.path):
            yield inp
            continue
        try:
            frames = list(plan(inp.path, opts))
        except ImageError as e:
            yield Input(inp.path, error=str(e))
            continue
        yield from frames


def count_records(inputs: Iterable[str], opts: VideoOptions, found: Callable[[int], None] | None = None) -> int:
    """How many records the command line's inputs make, a video's sampled frames counted (stdin
    left out): for a progress bar's total, worked out beside the run."""
    from .images import _expand

    n = 0
    for _ in expand((inp for item in inputs if item != "-" for inp in _expand(item)), opts, urls=False):
        n += 1
        if found is not None and n % 500 == 0:
            found(n)
    return n


def _is_video(path: str, animated: bool) -> bool:
    if is_video_name(path, animated):
        return True
    from .images import is_image_name
    from .reading import is_url

    if is_image_name(path) or is_url(path):
        return False
    from .reading import open_file

    try:  # a file named without a video extension: its first bytes say (a regular file's only)
        with open_file(path, None) as f:
            head = f.read(12)
    except (ImageError, OSError):
        return False
    return head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3" or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")


def plan(path: str, opts: VideoOptions) -> Iterator[FrameInput]:
    """The sampled frames of one video (see the module's text); :class:`ImageError` when it has none."""
    from .reading import is_url

    source = _download(path, opts) if is_url(path) else path
    if os.path.splitext(path)[1].lower() in ANIMATED_EXTENSIONS and opts.animated:
        times = _animated_times(source, opts)
        picks = _sample(times, list(range(len(times))), opts)
        for frame, pts in picks:
            yield FrameInput(path, time=round(times[frame], 6), frame=frame, pts=pts, source=source, stream=-1,
                             max_bytes=opts.max_bytes or 0, cap_option=opts.cap_option)  # fmt: skip
        return
    yield from _plan_av(path, source, opts)


def _plan_av(path: str, source: str, opts: VideoOptions) -> Iterator[FrameInput]:
    av = load_av()
    pts_list: list[int] = []
    keys: list[int] = []  # positions (decode order) of keyframes
    try:
        with open_video(source, opts.max_bytes, opts.cap_option) as video:
            container = video.container
            if not container.streams.video:
                raise ImageError("no video stream (audio only)" if container.streams.audio else
                                 "no video stream (truncated, or not a video)")  # fmt: skip
            vs = container.streams.video[0]
            _check_size(vs.codec_context.width, vs.codec_context.height, opts.max_pixels)
            base, origin = vs.time_base, vs.start_time
            horizon = None  # with --max-frames: no need to read packets far past the last sample
            check_at = 256  # packets read when the horizon is next worked out (doubling: linear in all)
            for packet in container.demux(vs):
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None or packet.size == 0:
                    continue
                if packet.is_keyframe:
                    if horizon is not None and ts > horizon:
                        break
                    keys.append(len(pts_list))
                pts_list.append(ts)
                if opts.max_frames and horizon is None and len(pts_list) >= check_at:
                    horizon, check_at = _horizon(pts_list, origin, base, opts), 2 * check_at
                if len(pts_list) >= MAX_PACKETS:
                    break
            stream_index = vs.index
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("out of memory reading this video") from None
    except Exception as e:  # FFmpeg's errors (InvalidDataError for a file that is no video), EOF...
        if isinstance(e, av.InvalidDataError):  # an MP4 cut before its index, a file that is no video
            raise ImageError(f"not a video, or truncated ({ffmpeg_message(e)})") from None
        raise ImageError(f"cannot read video ({ffmpeg_message(e)})") from None
    if not pts_list:
        raise ImageError("no video frames (empty or truncated video)")
    if origin is None:
        origin = min(pts_list)
    order = sorted(range(len(pts_list)), key=pts_list.__getitem__)  # presentation order
    shown = [pts_list[i] for i in order]
    times = [float((p - origin) * base) for p in shown]
    key_at = _last_key(keys, len(pts_list))
    for frame, pts in _sample(times, shown, opts):
        pos = order[frame]
        k = key_at[pos]
        if k is not None and pts < pts_list[k]:  # an open GOP's leading frame: it refers to the GOP before
            i = bisect.bisect_left(keys, k)
            k = keys[i - 1] if i > 0 else None
        start = None if k is None or k == 0 else pts_list[k]
        yield FrameInput(path, time=round(times[frame], 6), frame=frame, pts=pts, start=start, source=source,
                         stream=stream_index, max_bytes=opts.max_bytes or 0, cap_option=opts.cap_option)  # fmt: skip


def _horizon(pts_list: list[int], origin: Any, base: Any, opts: VideoOptions) -> int | None:
    """The pts past which no sample can fall once ``max_frames`` samples are known, or None."""
    o = min(pts_list) if origin is None else origin
    shown = sorted(pts_list)
    times = [float((p - o) * base) for p in shown]
    picks = _sample(times[:-1], shown[:-1], opts)  # the last frame's successor is not known yet
    if opts.max_frames is None or len(picks) < opts.max_frames:
        return None
    return shown[-1]


def _last_key(keys: list[int], n: int) -> list[int | None]:
    """For each packet position, the position of the last keyframe at or before it."""
    out: list[int | None] = [None] * n
    j, last = 0, None
    for i in range(n):
        while j < len(keys) and keys[j] <= i:
            last, j = keys[j], j + 1
        out[i] = last
    return out


def _sample(times: list[float], pts: list[int], opts: VideoOptions) -> list[tuple[int, int]]:
    """(frame index, pts) of the frames on screen at 0, every, 2 every, ... (each frame once)."""
    picks: list[tuple[int, int]] = []
    if not times:
        return picks
    last_time, k = times[-1], 0
    while True:
        t = k * opts.every
        if t > last_time + 1e-9 and k > 0:
            break
        i = max(0, bisect.bisect_right(times, t + 1e-9) - 1)
        if not picks or picks[-1][0] != i:
            picks.append((i, pts[i]))
            if opts.max_frames and len(picks) >= opts.max_frames:
                break
        # jump straight to the next sample time past this frame (a 10-hour gap costs no loop)
        nxt = times[i + 1] if i + 1 < len(times) else last_time + opts.every
        k = max(k + 1, int(nxt // opts.every))
    return picks


def _check_size(width: int, height: int, max_pixels: int | None) -> None:
    if width <= 0 or height <= 0:
        # FFmpeg leaves 0x0 where the file declares no size or one too large to decode at all
        raise ImageError("refused: the video declares no frame size, or one too large to decode")
    check_pixels(width, height, max_pixels)


def _animated_times(source: str, opts: VideoOptions) -> list[float]:
    from PIL import Image

    from .reading import open_file

    try:
        with open_file(source, opts.max_bytes, opts.cap_option) as f, Image.open(_not_empty(f)) as im:
            check_pixels(im.size[0], im.size[1], opts.max_pixels)
            times, t = [], 0.0
            for i in range(min(getattr(im, "n_frames", 1), MAX_PACKETS)):
                im.seek(i)
                times.append(round(t, 6))
                t += max(float(im.info.get("duration") or 100), 10.0) / 1000  # as browsers: under 10 ms is 100 ms
            return times
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"cannot read animated image ({' '.join(str(e).split()) or type(e).__name__})") from None


# --- where the bytes are ------------------------------------------------------------------------


class Video:
    """An FFmpeg container over a video file opened here (:func:`zeroshot.image.reading.open_file`:
    a regular file, never a blocking open, checked on the descriptor FFmpeg then reads, the byte cap
    held while it reads). FFmpeg is handed the open file, never the name, and may open nothing on
    its own (no protocol is allowed it: a playlist or a reference inside a file names no other).
    Closing it closes both (PyAV leaves a file object it was handed open)."""

    def __init__(self, source: str, max_bytes: int | None, option: str) -> None:
        from .reading import open_file

        self.file = open_file(source, max_bytes, option)
        try:
            st = os.fstat(_not_empty(self.file).fileno())
            self.ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            self.container = load_av().open(self.file, metadata_errors="ignore", container_options=NO_PROTOCOLS)
        except BaseException:
            self.file.close()
            raise

    def close(self) -> None:
        try:
            self.container.close()
        finally:
            self.file.close()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


NO_PROTOCOLS = {"protocol_whitelist": "none"}  # names no protocol: every open FFmpeg would make itself fails


def open_video(source: str, max_bytes: int | None, option: str) -> Video:
    """``source`` opened for FFmpeg (see :class:`Video`); :class:`ImageError` for a file that is not
    a regular file, is empty or is over the cap, FFmpeg's own errors for one it cannot open."""
    return Video(source, max_bytes, option)


def _not_empty(f: Any) -> Any:
    if os.fstat(f.fileno()).st_size == 0:
        raise ImageError("empty file (0 bytes)")
    return f


def cap_of(f: FrameInput) -> tuple[int | None, str]:
    """The byte cap a frame's file is read within, and the option it came from."""
    return f.max_bytes or None, f.cap_option or named("max_video_bytes")


_downloads: str | None = None


def _download(url: str, opts: VideoOptions) -> str:
    """A URL's video in a temporary folder that :func:`remove_downloads` deletes, written a block
    at a time as it arrives (the byte cap, the timeouts and the deadline held while it does)."""
    from .reading import url_blocks

    global _downloads
    if _downloads is None:
        _downloads = tempfile.mkdtemp(prefix="zeroshot-video-")
    fd, name = tempfile.mkstemp(dir=_downloads, suffix=os.path.splitext(url.split("?")[0])[1][:8])
    try:
        with os.fdopen(fd, "wb") as f:
            for block in url_blocks(url, opts.max_bytes, opts.timeout, opts.cap_option):
                f.write(block)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(name)
        if isinstance(e, OSError):  # the temporary folder's disk is full, or went
            raise ImageError(f"cannot keep the download ({e.strerror or e})") from None
        raise
    return name


_digests: dict[tuple[int, int, int, int], str] = {}


def frame_digest(f: FrameInput) -> str:
    """The image cache's key of a frame: the video file's content and the frame's exact time (its
    stream and presentation timestamp). The file is opened as its frames are (the same checks, the
    same cap) and hashed once per run while it stays the same file (device, inode, size, time)."""
    import hashlib

    from .reading import open_file

    with open_file(f.source, *cap_of(f)) as file:
        st = os.fstat(file.fileno())
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        digest = _digests.get(key)
        if digest is None:
            if len(_digests) >= 64:
                _digests.clear()
            digest = _digests[key] = file.digest()
    return hashlib.sha256(f"{digest}:{f.stream}:{f.pts}".encode()).hexdigest()


def remove_downloads() -> None:
    """Delete the copies of videos fetched from URLs (the end of a run)."""
    global _downloads
    if _downloads is not None:
        shutil.rmtree(_downloads, ignore_errors=True)
        _downloads = None


def ffmpeg_message(e: Exception) -> str:
    """FFmpeg's message without its error number and the file name PyAV appends."""
    text = getattr(e, "strerror", None) or str(e)
    return " ".join(str(text).split()) or type(e).__name__


def load_av() -> Any:
    try:
        import av
    except ImportError:
        raise ImageError("videos need PyAV: pip install av") from None
    av.logging.set_level(None)  # FFmpeg's own warnings would interleave with the records on stderr
    return av
