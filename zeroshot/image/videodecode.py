"""Decoding a video's sampled frames, in the decoding workers (see :mod:`zeroshot.image.video`).

A :class:`~zeroshot.image.video.VideoPart` is a run of sampled frames that share a keyframe: one worker
opens the file, seeks to that keyframe and decodes forward only as far as the last of them. The
stream's rotation is applied, then the model's preprocessing, as for an image.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .images import ImageError, Input, check_pixels
from .video import PART_FRAMES, FrameInput, VideoPart, ffmpeg_message, load_av


def parts(inputs: Iterable[Input], single: Callable[[FrameInput], bool] | None = None) -> Iterator[Input]:
    """Consecutive frames of one video that share a keyframe, grouped into :class:`VideoPart`
    items of up to :data:`PART_FRAMES`; other inputs (and frames ``single`` keeps apart, e.g.
    answered by a cache) pass through."""
    group: list[FrameInput] = []
    for inp in inputs:
        if isinstance(inp, FrameInput) and not (single is not None and single(inp)):
            if group and ((inp.source, inp.start) != (group[0].source, group[0].start) or len(group) >= PART_FRAMES):
                yield VideoPart(group[0].path, frames=tuple(group))
                group = []
            group.append(inp)
            continue
        if group:
            yield VideoPart(group[0].path, frames=tuple(group))
            group = []
        yield inp
    if group:
        yield VideoPart(group[0].path, frames=tuple(group))


def decode_part(
    part: VideoPart, to_payload: Callable[[Any], Any], max_pixels: int | None
) -> list[tuple[Any, str | None]]:
    """(payload, None) or (None, error) for each frame of ``part``, in its order."""
    frames = part.frames
    try:
        images = _animated_frames(frames) if frames[0].stream < 0 else _av_frames(frames, max_pixels)
    except ImageError as e:
        return [(None, str(e))] * len(frames)
    out: list[tuple[Any, str | None]] = []
    for f in frames:
        image = images.get(f.pts)
        if image is None:
            out.append((None, f"frame at {f.time:g} s could not be decoded"))
            continue
        try:
            out.append((to_payload(image), None))
        except ImageError as e:
            out.append((None, str(e)))
    return out


class _Open:
    """A video kept open between parts in one decoding worker: the next part seeks in it instead of
    opening the file again (an open, its stream probe and the decoder's threads cost more than
    decoding the keyframe a part often needs)."""

    def __init__(self, source: str, stream: int, ident: tuple[int, int, int]) -> None:
        self.ident = ident
        self.container = load_av().open(source, metadata_errors="ignore")
        self.stream = self.container.streams[stream]
        self.stream.thread_type = "SLICE"
        self.fresh = True  # nothing decoded yet: it stands at the start
        self.frames: Iterator[Any] | None = None  # the decoding under way, to go on with
        self.at: int | None = None  # the last frame it gave (pts)


_kept = threading.local()  # per thread: threads decoding at once never share a container
KEEP_OPEN = 2


def _open(source: str, stream: int, again: bool = False) -> _Open:
    st = os.stat(source)
    ident = (st.st_ino, st.st_size, st.st_mtime_ns)
    kept: dict[tuple[str, int], _Open] = _kept.__dict__.setdefault("videos", {})
    video = kept.pop((source, stream), None)
    if video is not None and (again or video.ident != ident):
        video.container.close()
        video = None
    if video is None:
        while len(kept) >= KEEP_OPEN:
            kept.pop(next(iter(kept))).container.close()
        video = _Open(source, stream, ident)
    kept[(source, stream)] = video
    return video


def _forget(source: str, stream: int) -> None:
    video = _kept.__dict__.get("videos", {}).pop((source, stream), None)
    if video is not None:
        video.container.close()


def _av_frames(frames: tuple[FrameInput, ...], max_pixels: int | None, seek: bool = True) -> dict[int, Any]:
    want = {f.pts for f in frames}
    first, last = min(want), max(want)
    got: dict[int, Any] = {}
    source, index = frames[0].source, frames[0].stream
    start = frames[0].start if seek else None
    try:
        video = _open(source, index)
        if video.frames is not None and video.at is not None and video.at < first and (start or 0) <= video.at:
            start = None  # the frames wanted lie ahead and their keyframe behind: decoding goes on
        else:
            if start is None and not video.fresh:
                video = _open(source, index, again=True)  # from the very start: opened afresh
            if start is not None:
                video.container.seek(start, stream=video.stream, backward=True, any_frame=False)
            video.frames = iter(video.container.decode(video.stream))
        video.fresh = False
        for n, frame in enumerate(video.frames):
            ts = frame.pts if frame.pts is not None else frame.dts
            if ts is None:
                continue
            video.at = ts
            if n == 0 and start is not None and ts > first:  # the seek went past: decode from the start
                return _av_frames(frames, max_pixels, seek=False)
            if ts in want and ts not in got:
                check_pixels(frame.width, frame.height, max_pixels)
                got[ts] = _upright(frame.to_image(), getattr(frame, "rotation", 0) or 0)
                if len(got) == len(want):
                    break
            elif ts > last:
                break
    except ImageError:
        _forget(source, index)
        raise
    except MemoryError:
        _forget(source, index)
        raise ImageError("out of memory decoding this video") from None
    except Exception as e:
        _forget(source, index)  # its state is unknown: the next part opens it again
        if not got:
            raise ImageError(f"cannot decode video ({ffmpeg_message(e)})") from None
    return got


def _upright(image: Any, rotation: float) -> Any:
    """The frame as shown: the display matrix's rotation (counter-clockwise degrees) undone."""
    from PIL import Image

    turn = int(round(rotation)) % 360
    if turn == 0:
        return image
    transpose = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    return image.transpose(transpose[turn]) if turn in transpose else image.rotate(turn, expand=True)


def _animated_frames(frames: tuple[FrameInput, ...]) -> dict[int, Any]:
    from PIL import Image

    got: dict[int, Any] = {}
    try:
        with Image.open(frames[0].source) as im:
            for f in sorted(frames, key=lambda f: f.pts):
                im.seek(f.pts)
                got[f.pts] = im.convert("RGB")
    except Exception as e:
        if not got:
            raise ImageError(f"cannot decode animated image ({' '.join(str(e).split()) or type(e).__name__})") from None
    return got


def frame_at(path: str, time: float, max_pixels: int | None = None) -> Any:
    """The frame of a local video on screen ``time`` seconds from its stream's start, upright (a
    contact sheet's thumbnail of a frame record); :class:`ImageError` when it cannot be had."""
    av = load_av()
    try:
        with av.open(path, metadata_errors="ignore") as container:
            stream = container.streams.video[0]
            check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
            target = (stream.start_time or 0) + int(round(time / stream.time_base))
            container.seek(target, stream=stream, backward=True, any_frame=False)
            shown = None
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts > target and shown is not None:
                    break
                shown = frame
            if shown is None:
                raise ImageError(f"no frame at {time:g} s")
            return _upright(shown.to_image(), getattr(shown, "rotation", 0) or 0)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"cannot decode video ({ffmpeg_message(e)})") from None
