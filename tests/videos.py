"""Videos made for the tests with PyAV from Fashion-MNIST images: segments of known classes and
durations, H.264 in MP4, MKV or MPEG-TS, VP9 in WebM, a variable frame rate, a rotation in the
MP4's track header, each frame's index marked on it."""

from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "fashion"
CODECS = {".mp4": "libx264", ".webm": "libvpx-vp9", ".mkv": "libx264", ".ts": "libx264"}


def frame_pixels(png: Path, size: tuple[int, int]) -> np.ndarray:
    """A Fashion-MNIST example as an RGB frame of ``size`` (width, height): the picture in the middle."""
    w, h = size
    side = min(w, h)
    im = Image.open(png).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (w, h), (0, 0, 0))
    canvas.paste(im, ((w - side) // 2, (h - side) // 2))
    return np.asarray(canvas)


def make_video(
    path: Path,
    segments: list[tuple[Path, float]],
    *,
    fps: int = 10,
    size: tuple[int, int] = (64, 64),
    durations_ms: list[int] | None = None,
    gop: int | None = None,
    stored_turned: bool = False,
    marked: bool = False,
) -> list[tuple[float, int]]:
    """Write ``segments`` (image, seconds) as a video; returns each frame's (start time in seconds,
    segment).

    ``durations_ms``: a variable frame rate, frame durations taken from this list in turn.
    ``stored_turned``: the pictures stored a quarter turn counter-clockwise (``size`` is then the
    stored size), as a phone stores portrait video; :func:`rotate_mp4` makes players turn it back.
    ``marked``: each frame's index in white blocks along its bottom edge, so that a frame decoded in
    place of another shows; the segments' pictures still make the encoder's scene cuts (keyframes
    where a segment starts) when ``gop`` is not given."""
    import av

    codec = CODECS[path.suffix]
    times: list[tuple[float, int]] = []
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        tb = Fraction(1, 1000) if durations_ms else Fraction(1, fps)
        stream.codec_context.time_base = tb
        if gop:
            stream.codec_context.gop_size = gop
        pts = 0
        n = 0
        for segment, (png, seconds) in enumerate(segments):
            pixels = frame_pixels(png, (size[1], size[0]) if stored_turned else size)
            if stored_turned:
                pixels = np.ascontiguousarray(np.rot90(pixels, k=1))
            t0 = pts * tb
            while (pts * tb) - t0 < Fraction(seconds).limit_denominator(1000) - Fraction(1, 10**6):
                frame = av.VideoFrame.from_ndarray(_mark(pixels, n) if marked else pixels, format="rgb24")
                frame.pts = pts
                frame.time_base = tb
                times.append((float(pts * tb), segment))
                for packet in stream.encode(frame):
                    out.mux(packet)
                pts += durations_ms[n % len(durations_ms)] if durations_ms else 1
                n += 1
        for packet in stream.encode():
            out.mux(packet)
    return times


def _mark(pixels: np.ndarray, n: int) -> np.ndarray:
    """``n`` in binary along the bottom edge: an 8x8 white block for each bit set."""
    h, w = pixels.shape[:2]
    marked = pixels.copy()
    for bit in range(w // 8):
        if n >> bit & 1:
            marked[h - 8 :, 8 * bit : 8 * bit + 8] = 255
    return marked


def rotate_mp4(path: Path, degrees_clockwise: int = 90) -> None:
    """Set an MP4's track-header matrix to a rotation (what phones write for portrait video)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd")
    version = data[at + 4]
    matrix = at + 4 + 4 + (32 if version == 1 else 20) + 8 + 8
    one, minus = 0x00010000, 0xFFFF0000
    a, b, c, d = {90: (0, one, minus, 0), 180: (minus, 0, 0, minus), 270: (0, minus, one, 0)}[degrees_clockwise]
    struct.pack_into(">9I", data, matrix, a, b, 0, c, d, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))


def reference_frames(path: Path, clockwise: int = 0) -> list[tuple[float, Image.Image]]:
    """Every frame of a video as (seconds from the first, RGB image), decoded one after another by
    PyAV alone; ``clockwise``: turn each frame as a player shows a rotated track."""
    import av

    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        origin = stream.start_time or 0
        for frame in container.decode(stream):
            arr = frame.to_ndarray(format="rgb24")
            if clockwise:
                arr = np.ascontiguousarray(np.rot90(arr, k=-clockwise // 90))
            out.append((float((frame.pts - origin) * stream.time_base), Image.fromarray(arr)))
    return out


def sampled(frames: list[tuple[float, Image.Image]], every: float) -> list[int]:
    """Indexes of the frames on screen at 0, every, 2 every, ... (each once): the expected samples."""
    picks: list[int] = []
    k = 0
    while k * every <= frames[-1][0] or k == 0:
        t = k * every
        i = max(j for j, (s, _) in enumerate(frames) if s <= t + 1e-9) if frames[0][0] <= t + 1e-9 else 0
        if not picks or picks[-1] != i:
            picks.append(i)
        k += 1
    return picks


def long_silent_video(path: Path, hours: float = 10.0, gap_s: int = 60) -> None:
    """A 16x16 black H.264 stream lasting ``hours``, one frame every ``gap_s`` seconds (tiny file)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=1)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1)
        black = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        for i in range(int(hours * 3600 / gap_s)):
            black.pts = i * gap_s
            for packet in stream.encode(black):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def large_frames(path: Path, side: int = 3000, frames: int = 17) -> None:
    """``frames`` grey ``side`` x ``side`` frames, one a second, in one group of pictures (a band
    along the top changes from frame to frame): a worker decodes 16 of them in one part."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=1)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1)
        stream.codec_context.options = {"preset": "ultrafast"}
        planes = np.full((side * 3 // 2, side), 128, np.uint8)  # made in yuv420p: no conversion to wait for
        for i in range(frames):
            planes[: side // 8] = 16 + 12 * i
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def audio_only(path: Path) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for i in range(8):
            frame.pts = i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def huge_declared(path: Path, side: int = 100_000) -> None:
    """An AVI whose headers declare ``side`` x ``side`` frames (the picture inside is 16x16)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("rawvideo", rate=10)  # no bitstream header to correct the container's
        stream.width = stream.height = 16
        stream.pix_fmt = "bgr24"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        for i in range(5):
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    data = bytearray(path.read_bytes())
    avih = data.index(b"avih") + 8
    struct.pack_into("<II", data, avih + 32, side, side)
    strf = data.index(b"strf") + 8
    struct.pack_into("<ii", data, strf + 4, side, side)
    path.write_bytes(bytes(data))
