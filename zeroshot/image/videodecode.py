"""Decoding a video's sampled frames, in the decoding workers (see :mod:`zeroshot.image.video`).

A :class:`~zeroshot.image.video.VideoPart` is a run of sampled frames that share a keyframe: one
worker opens the file (:class:`~zeroshot.image.video.Video`: the file, never its name, within its
byte cap), seeks to that keyframe (:func:`seek_frames`, checked on what the decoder gives) and
decodes forward only as far as the last of them. The stream's rotation is applied, then the
model's preprocessing, as for an image.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from typing import Any

from ..base.options import named
from .images import ImageError, Input, check_pixels
from .video import PART_FRAMES, FrameInput, VideoPart, cap_of, ffmpeg_message, open_video


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
    """(payload, None) or (None, error) for each frame of ``part``, in its order. Each frame becomes
    its payload as soon as it is decoded: a part never holds its frames at full size."""

    def convert(image: Any) -> tuple[Any, str | None]:
        try:
            return to_payload(image), None
        except ImageError as e:
            return None, str(e)

    frames = part.frames
    try:
        got = _animated_frames(frames, convert) if frames[0].stream < 0 else _av_frames(frames, convert, max_pixels)
    except ImageError as e:
        return [(None, str(e))] * len(frames)
    return [got.get(f.pts) or (None, f"frame at {f.time:g} s could not be decoded") for f in frames]


class _Open:
    """A video kept open between parts in one decoding worker: the next part seeks in it instead of
    opening the file again (an open, its stream probe and the decoder's threads cost more than
    decoding the keyframe a part often needs)."""

    def __init__(self, frame: FrameInput) -> None:
        self.video = open_video(frame.source, *cap_of(frame))
        try:
            self.stream = self.video.container.streams[frame.stream]
        except BaseException:
            self.video.close()
            raise
        self.stream.thread_type = "SLICE"
        self.fresh = True  # nothing decoded yet: it stands at the start
        self.frames: Iterator[Any] | None = None  # the decoding under way, to go on with
        self.at: int | None = None  # the last frame it gave (pts)


_kept = threading.local()  # per thread: threads decoding at once never share a container
KEEP_OPEN = 2


def _open(frame: FrameInput, again: bool = False) -> _Open:
    """The frame's video, kept open from an earlier part while its file is the same file."""
    kept: dict[tuple[str, int], _Open] = _kept.__dict__.setdefault("videos", {})
    key = (frame.source, frame.stream)
    video = kept.pop(key, None)
    if video is not None:
        try:
            st = os.stat(frame.source)  # a stat never blocks, whatever the path now names
            same = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == video.video.ident
        except OSError:
            same = False
        if again or not same:
            video.video.close()
            video = None
    if video is None:
        while len(kept) >= KEEP_OPEN:
            kept.pop(next(iter(kept))).video.close()
        video = _Open(frame)
    kept[key] = video
    return video


def _forget(frame: FrameInput) -> None:
    video = _kept.__dict__.get("videos", {}).pop((frame.source, frame.stream), None)
    if video is not None:
        video.video.close()


def _ts(frame: Any) -> int | None:
    return frame.pts if frame.pts is not None else frame.dts


def _av_frames(
    frames: tuple[FrameInput, ...], convert: Callable[[Any], tuple[Any, str | None]], max_pixels: int | None
) -> dict[int, tuple[Any, str | None]]:
    want = {f.pts for f in frames}
    first, last = min(want), max(want)
    got: dict[int, tuple[Any, str | None]] = {}
    start = frames[0].start
    try:
        video = _open(frames[0])
        if video.frames is not None and video.at is not None and video.at < first and (start or 0) <= video.at:
            pass  # the frames wanted lie ahead and their keyframe behind: decoding goes on
        else:
            video.frames = None
            if start is not None:
                video.frames = seek_frames(video.video.container, video.stream, start, first)
                video.fresh = False
            if video.frames is None:
                if not video.fresh:
                    video = _open(frames[0], again=True)  # from the very start: opened afresh
                video.frames = iter(video.video.container.decode(video.stream))
        video.fresh = False
        for frame in video.frames:
            ts = _ts(frame)
            if ts is None:
                continue
            video.at = ts
            if ts in want and ts not in got:
                check_pixels(frame.width, frame.height, max_pixels)
                got[ts] = convert(_upright(frame.to_image(), getattr(frame, "rotation", 0) or 0))
                if len(got) == len(want):
                    break
            elif ts > last:
                break
    except ImageError:
        _forget(frames[0])
        raise
    except MemoryError:
        _forget(frames[0])
        raise ImageError("out of memory decoding this video") from None
    except Exception as e:
        _forget(frames[0])  # its state is unknown: the next part opens it again
        if not got:
            raise ImageError(f"cannot decode video ({ffmpeg_message(e)})") from None
    return got


def seek_frames(container: Any, stream: Any, target: int, first: int) -> Iterator[Any] | None:
    """The stream's frames decoded from a seek to the keyframe at or before ``target`` (a pts),
    starting with the first keyframe the decoder gives, provided it is shown at or before ``first``
    (the first frame wanted); None when no seek lands there (the caller decodes from the start).

    FFmpeg's demuxers do not all seek alike: MP4 and Matroska land on the keyframe their index
    gives for a presentation time, but MPEG-TS (and every demuxer FFmpeg seeks in by bisecting the
    file) lands on any packet by its decoding time, which for a keyframe followed by B-frames is
    after the keyframe itself. So the landing is checked on what the decoder gives, and a seek
    that lands past the keyframe is aimed earlier, 1 s, then 4, 16... (each try decodes no further
    than ``first``), down to the stream's start."""
    base = stream.time_base or Fraction(1, 90_000)
    step = max(1, int(1 / base))  # a second
    origin = stream.start_time if stream.start_time is not None else 0
    back = 0
    while True:
        aim = target - back
        container.seek(aim, stream=stream, backward=True, any_frame=False)
        frames = iter(container.decode(stream))
        for frame in frames:
            ts = _ts(frame)
            if ts is None:
                continue
            if ts > first:
                break  # past what is wanted with no keyframe before it: the seek landed too late
            if frame.key_frame:  # frames before the first keyframe may be garbage: never looked at
                return itertools.chain([frame], frames)
        if aim <= origin:
            return None
        back = 4 * back if back else step


def _upright(image: Any, rotation: float) -> Any:
    """The frame as shown: the display matrix's rotation (counter-clockwise degrees) undone."""
    from PIL import Image

    turn = int(round(rotation)) % 360
    if turn == 0:
        return image
    transpose = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    return image.transpose(transpose[turn]) if turn in transpose else image.rotate(turn, expand=True)


def _animated_frames(
    frames: tuple[FrameInput, ...], convert: Callable[[Any], tuple[Any, str | None]]
) -> dict[int, tuple[Any, str | None]]:
    from PIL import Image

    from .reading import open_file

    got: dict[int, tuple[Any, str | None]] = {}
    try:
        with open_file(frames[0].source, *cap_of(frames[0])) as f, Image.open(f) as im:
            for fr in sorted(frames, key=lambda fr: fr.pts):
                im.seek(fr.pts)
                got[fr.pts] = convert(im.convert("RGB"))
    except ImageError:
        if not got:
            raise
    except Exception as e:
        if not got:
            raise ImageError(f"cannot decode animated image ({' '.join(str(e).split()) or type(e).__name__})") from None
    return got


def frame_at(path: str, time: float, max_pixels: int | None = None, max_bytes: int | None = None) -> Any:
    """The frame of a local video on screen ``time`` seconds from its stream's start, upright (a
    contact sheet's thumbnail of a frame record); :class:`ImageError` when it cannot be had. The
    file is opened as for decoding (:class:`~zeroshot.image.video.Video`); ``max_bytes``: its cap
    (None: none, as the record it shows was made within the run's)."""
    try:
        with open_video(path, max_bytes, named("max_video_bytes")) as video:
            stream = video.container.streams.video[0]
            check_pixels(stream.codec_context.width, stream.codec_context.height, max_pixels)
            target = (stream.start_time or 0) + int(round(time / stream.time_base))
            frames = seek_frames(video.container, stream, target, target)
            if frames is not None:
                return _shown(frames, target, time)
        with open_video(path, max_bytes, named("max_video_bytes")) as video:  # decoded from the start, opened afresh
            return _shown(video.container.decode(video.container.streams.video[0]), target, time)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"cannot decode video ({ffmpeg_message(e)})") from None


def _shown(frames: Iterable[Any], target: int, time: float) -> Any:
    """The last of ``frames`` that starts at or before ``target`` (the first when none does), upright."""
    shown = None
    for frame in frames:
        ts = _ts(frame)
        if ts is not None and ts > target and shown is not None:
            break
        shown = frame
    if shown is None:
        raise ImageError(f"no frame at {time:g} s")
    return _upright(shown.to_image(), getattr(shown, "rotation", 0) or 0)
