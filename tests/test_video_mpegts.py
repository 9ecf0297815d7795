"""MPEG-TS (and any container FFmpeg seeks in by decoding timestamps): every sampled frame decodes,
and is the frame PyAV gives decoding the stream straight through.

H.264 with B-frames gives a keyframe a decoding timestamp before its presentation timestamp; the
MPEG-TS demuxer seeks by decoding timestamp, to any packet, so a seek aimed at a keyframe's
presentation time lands after the keyframe. The clips: a fixed group of pictures (10 frames) and
the encoder's own scene cuts (a keyframe where a segment starts), 60 frames each, every frame
marked with its index so that a neighbour decoded in its place shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from zeroshot.model.models import BUNDLED_NAME

from .videos import EXAMPLES, make_video, reference_frames

ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))
MODEL = ["-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-q", "-k", "10"]
EVERY = 0.1  # every frame of a 10 fps clip


def _example(name: str) -> Path:
    return sorted(EXAMPLES.glob(f"{name}-*.png"))[0]


@pytest.fixture(scope="module")
def ts_clips(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("ts")
    segments = [(_example("bag"), 2.0), (_example("coat"), 2.0), (_example("sandal"), 2.0)]
    clips = []
    for name, gop in (("gop10.ts", 10), ("scene-cuts.ts", None)):
        make_video(root / name, segments, gop=gop, marked=True)
        clips.append(root / name)
    return clips


def test_the_clips_have_the_shape_that_failed(ts_clips):
    """60 frames, keyframes where expected, and keyframes decoded after their presentation time."""
    import av

    for clip, keys in zip(ts_clips, ([0, 10, 20, 30, 40, 50], [0, 20, 40]), strict=True):
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            packets = sorted((p.pts, p.dts, p.is_keyframe) for p in container.demux(stream) if p.size)
        assert len(packets) == 60
        assert [i for i, p in enumerate(packets) if p[2]] == keys, clip.name
        assert all(dts < pts for pts, dts, key in packets[1:] if key)


def test_every_sampled_frame_is_the_frame_decoded_straight_through(ts_clips, monkeypatch):
    """Parts decoded in order (decoding goes on from one part to the next) and last first (each a
    seek), and the contact sheet's frame at each time, are pixel for pixel the frames PyAV
    decodes from the start; in order, a worker opens each clip once (kept open between parts)."""
    from zeroshot.image import videodecode
    from zeroshot.image.video import VideoOptions, open_video, plan

    opened = []
    monkeypatch.setattr(videodecode, "open_video", lambda *a: opened.append(a[0]) or open_video(*a))
    for clip in ts_clips:
        reference = [np.asarray(image) for _, image in reference_frames(clip)]
        frames = list(plan(str(clip), VideoOptions(every=EVERY)))
        assert [f.frame for f in frames] == list(range(60))
        parts = list(videodecode.parts(frames))
        assert len(parts) > 2
        for order in (parts, parts[::-1]):
            for part in order:
                got = videodecode.decode_part(part, np.asarray, None)
                for f, (pixels, error) in zip(part.frames, got, strict=True):
                    assert error is None, (clip.name, f.frame, error)
                    assert np.array_equal(pixels, reference[f.frame]), (clip.name, f.frame)
            if order is parts:
                assert opened == [str(clip)]  # (a part from the very start, not first, opens it afresh)
        for f in frames[::7]:
            shown = np.asarray(videodecode.frame_at(str(clip), f.time))
            assert np.array_equal(shown, reference[f.frame]), (clip.name, f.frame)
        opened.clear()


def test_mpegts_frame_records_equal_the_frames_as_pngs(ts_clips, tmp_path):
    """From outside: a record for each of the 120 frames, none an error, each scoring as the
    same frame decoded straight through and saved as a PNG."""
    pngs = []
    for clip in ts_clips:
        for i, (_, image) in enumerate(reference_frames(clip)):
            pngs.append(tmp_path / f"{clip.stem}-{i:02d}.png")
            image.save(pngs[-1])
    proc = subprocess.run([ZEROSHOT, "classify", *map(str, ts_clips), *map(str, pngs), *MODEL, "--every", str(EVERY)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    frames, images = records[:120], records[120:]
    assert [e for e in frames if "error" in e] == []
    assert [(r["path"], r["frame"]) for r in frames] == [(str(c), i) for c in ts_clips for i in range(60)]
    for frame, png in zip(frames, images, strict=True):
        ours = {t["label"]: t["score"] for t in frame["top_k"]}
        theirs = {t["label"]: t["score"] for t in png["top_k"]}
        assert ours.keys() == theirs.keys()
        assert max(abs(ours[k] - theirs[k]) for k in ours) < 1e-5, (frame["path"], frame["frame"])
