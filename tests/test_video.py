"""Video inputs: a record per sampled frame (time, frame number), or per video; hostile videos.

Videos are made here with PyAV from Fashion-MNIST examples (segments of known classes and
lengths): H.264 in MP4, VP9 in WebM, a variable frame rate, a rotated track. The reference for
every frame record is the same frame decoded by PyAV alone, saved as a PNG and classified as an
image by the installed ``zeroshot``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from zeroshot.model.models import BUNDLED_NAME

from .conftest import invoke
from .videos import (
    EXAMPLES,
    audio_only,
    huge_declared,
    large_frames,
    long_silent_video,
    make_video,
    reference_frames,
    rotate_mp4,
    sampled,
)

ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))
MODEL = ["-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-q"]
EVERY = 0.5
CLASSES = 10


def _example(name: str) -> Path:
    return sorted(EXAMPLES.glob(f"{name}-*.png"))[0]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, tuple[Path, int, list[tuple[float, int]]]]:
    """name -> (video, clockwise turn a player applies, each frame's (time, segment)); segments of
    three classes, 5.5 s."""
    root = tmp_path_factory.mktemp("clips")
    segments = [(_example("ankle-boot"), 2.0), (_example("coat"), 1.5), (_example("sandal"), 2.0)]
    made = {}
    for name, kw in [
        ("h264.mp4", {}),
        ("vp9.webm", {}),
        ("vfr.mp4", {"durations_ms": [50, 150, 100, 30]}),
        ("rotated.mp4", {"size": (64, 48), "stored_turned": True}),
    ]:
        path = root / name
        frames = make_video(path, segments, **kw)
        turn = 0
        if name == "rotated.mp4":
            rotate_mp4(path, 90)
            turn = 90
        made[name] = (path, turn, frames)
    return made


def run(*args: str, timeout: float = 300) -> tuple[int, list[dict], str]:
    proc = subprocess.run([ZEROSHOT, "classify", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


@pytest.fixture(scope="module")
def frame_run(clips, tmp_path_factory):
    """(records of the videos, expected (video, time, frame), records of those frames as PNGs)."""
    pngs = tmp_path_factory.mktemp("frames")
    expected, files = [], []
    for path, turn, _ in clips.values():
        frames = reference_frames(path, turn)
        for i in sampled(frames, EVERY):
            expected.append((str(path), frames[i][0], i))
            files.append(pngs / f"{len(files):04d}.png")
            frames[i][1].save(files[-1])
    # One run for both: the videos' frame records first, then the same frames as PNG files.
    code, recs, err = run(*(p for p, _, _ in clips.values()), *files, *MODEL, "-k", str(CLASSES), "--every", str(EVERY))
    assert code == 0, err
    return recs[: len(expected)], expected, recs[len(expected) :]


def test_frame_records_carry_times_and_equal_the_frames_as_pngs(frame_run):
    recs, expected, ref = frame_run
    assert len(recs) == len(expected) == len(ref)
    for rec, (path, t, index), png in zip(recs, expected, ref, strict=True):
        assert list(rec)[:3] == ["path", "time", "frame"]
        assert rec["path"] == path
        assert rec["frame"] == index and abs(rec["time"] - t) < 1e-6, (rec, t, index)
        assert rec["label"] == png["label"]
        ours = {r["label"]: r["score"] for r in rec["top_k"]}
        theirs = {r["label"]: r["score"] for r in png["top_k"]}
        assert ours.keys() == theirs.keys()
        assert max(abs(ours[k] - theirs[k]) for k in ours) < 1e-5, path


def test_the_sampled_frames_show_the_segments_classes(frame_run, clips):
    """The segments' frames are the Fashion-MNIST pictures they were made from: each segment's
    frames share one label, three segments three labels. The rotated track is stored turned and
    shows its pictures upright only when turned as players do: its labels are the others'."""
    recs, _, _ = frame_run
    for path, _, made in clips.values():
        mine = [r for r in recs if r["path"] == str(path)]
        by_segment: dict[int, set[str]] = {}
        for r in mine:
            assert made[r["frame"]][0] == pytest.approx(r["time"], abs=1e-6)
            by_segment.setdefault(made[r["frame"]][1], set()).add(r["label"])
        assert sorted(by_segment) == [0, 1, 2] and all(len(s) == 1 for s in by_segment.values()), (path, by_segment)
        assert len(set.union(*by_segment.values())) == 3  # three pictures, three labels
        seen = [by_segment[i] for i in range(3)]
        if path.name == "h264.mp4":
            upright = seen
    assert seen == upright  # the rotated track, last: turned the right way round


def test_per_video_is_the_mean_of_its_frames(frame_run, clips):
    recs, _, _ = frame_run
    code, videos, err = run(*(p for p, _, _ in clips.values()), *MODEL, "-k", str(CLASSES), "--every", str(EVERY),
                            "--per-video")  # fmt: skip
    assert code == 0, err
    assert [v["path"] for v in videos] == [str(p) for p, _, _ in clips.values()]
    for v in videos:
        frames = [r for r in recs if r["path"] == v["path"]]
        mean = {}
        for r in frames:
            for t in r["top_k"]:
                mean[t["label"]] = mean.get(t["label"], 0.0) + t["score"] / len(frames)
        assert v["frames"] == len(frames)
        assert {t["label"]: pytest.approx(t["score"], abs=1e-12) for t in v["top_k"]} == mean
        assert v["label"] == max(mean, key=mean.get)
        best = sorted(frames, key=lambda r: -next(t["score"] for t in r["top_k"] if t["label"] == v["label"]))
        assert [p["time"] for p in v["peaks"]] == [r["time"] for r in best[:3]]


def test_hostile_videos_one_error_each_quickly_in_bounded_memory(tmp_path):
    """One error record each, at once; the ten-hour clip and the 3000x3000 frames in bounded memory,
    measured over the whole process tree (frames are decoded in the forked workers): a worker that
    held a part's 16 frames at full size (27 MB each) would go over the bound."""
    (tmp_path / "zero.mp4").write_bytes(b"")
    make_video(tmp_path / "whole.mp4", [(_example("bag"), 1.0)])
    data = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    audio_only(tmp_path / "audio.m4a")
    (tmp_path / "text.mov").write_text("not a video\n")
    huge_declared(tmp_path / "huge.avi")
    huge_declared(tmp_path / "big.avi", 15_000)
    long_silent_video(tmp_path / "ten-hours.mp4")
    large_frames(tmp_path / "large.mp4")
    names = ["zero.mp4", "truncated.mp4", "audio.m4a", "text.mov", "huge.avi", "big.avi", "ten-hours.mp4", "large.mp4"]
    start = time.monotonic()
    tree_peak = process_peak = 0  # kB: the tree's proportional set size (shared pages once), a process's VmHWM
    with open(tmp_path / "out", "wb") as out, open(tmp_path / "err", "wb") as err:
        proc = subprocess.Popen([ZEROSHOT, "classify", *(str(tmp_path / n) for n in names), *MODEL,
                                 "--max-frames", "16", "--workers", "1"], stdout=out, stderr=err)  # fmt: skip
        while proc.poll() is None and time.monotonic() - start < 120:
            tree = _tree(proc.pid)
            tree_peak = max(tree_peak, sum(_kb(pid, "Pss", "smaps_rollup") for pid in tree))
            process_peak = max(process_peak, *(_kb(pid, "VmHWM") for pid in tree))
            time.sleep(0.02)
        proc.wait(timeout=5)
    elapsed = time.monotonic() - start
    recs = [json.loads(line) for line in (tmp_path / "out").read_text().splitlines()]
    assert proc.returncode == 1, (tmp_path / "err").read_text()
    errors = {Path(r["path"]).name: r["error"] for r in recs if "error" in r}
    assert errors == {
        "zero.mp4": "empty file (0 bytes)",
        "truncated.mp4": "not a video, or truncated (Invalid data found when processing input)",
        "audio.m4a": "no video stream (audio only)",
        "text.mov": "not a video, or truncated (Invalid data found when processing input)",
        "huge.avi": "refused: the video declares no frame size, or one too large to decode",
        "big.avi": "refused: 15000x15000 is 225,000,000 pixels, over the --max-pixels limit of 178,956,970",
    }
    long = [r for r in recs if r["path"].endswith("ten-hours.mp4")]
    assert [(r["time"], r["frame"]) for r in long] == [(60.0 * i, i) for i in range(16)]
    large = [r for r in recs if r["path"].endswith("large.mp4")]
    assert [(r["time"], r["frame"]) for r in large] == [(float(i), i) for i in range(16)]
    assert len(recs) == 6 + 16 + 16
    assert elapsed < 60, elapsed
    # torch, the model, FFmpeg and a frame or two at a time: 720 MB for the tree here, 710 MB for the
    # worker (its pages shared with the parent counted); a part's 16 frames held whole: 1.2 GB, 1.1 GB.
    assert 0 < tree_peak < 900_000, tree_peak
    assert 0 < process_peak < 900_000, process_peak


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the children of each of its threads, and theirs)."""
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        for children in Path(f"/proc/{found[-1]}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                todo += [int(child) for child in children.read_text().split()]
    return found


def _kb(pid: int, field: str, name: str = "status") -> int:
    """A ``field: N kB`` line of ``/proc/PID/NAME`` (0 once the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith(f"{field}:")), 0)


def test_animated_gif_as_video_and_as_image(tmp_path):
    frames = [Image.open(_example(n)).convert("RGB").resize((48, 48)) for n in ("bag", "coat", "sandal")]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=[100, 200, 300], loop=0)
    as_image = invoke("classify", gif, *MODEL, "--workers", "0")
    assert as_image.exit_code == 0 and "time" not in json.loads(as_image.stdout)
    result = invoke("classify", gif, *MODEL, "--workers", "0", "--animated-as-video", "--every", "0.1")
    assert result.exit_code == 0, result.output
    recs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["time"], r["frame"]) for r in recs] == [(0.0, 0), (0.1, 1), (0.3, 2)]


def test_eval_reports_per_video_accuracy(tmp_path):
    from zeroshot import Zeroshot
    from zeroshot.text.prompts import resolve_prompt_set

    root = tmp_path / "clips"
    for cls, name in (("coat", "coat"), ("sandal", "sandal"), ("bag", "bag")):
        (root / cls).mkdir(parents=True)
        pics = sorted(EXAMPLES.glob(f"{name}-*.png"))
        make_video(root / cls / "a.mp4", [(pics[0], 1.0), (pics[1], 1.0)])
        make_video(root / cls / "b.webm", [(pics[2], 1.5)])
    result = invoke("eval", root, *MODEL, "--workers", "0")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    zs = Zeroshot(BUNDLED_NAME)
    text = zs.text_classifier(resolve_prompt_set(dataset="fashion-mnist"))
    videos = sorted(str(p) for p in root.rglob("*.*"))
    per_video = list(zs.classify(videos, text, per_video=True, workers=0))
    frames = list(zs.classify(videos, text, workers=0))
    hits = [Path(v["path"]).parent.name == v["label"] for v in per_video]
    assert record["videos"] == 6 and record["video_frames"] == record["images"] == len(frames)
    assert record["video_top1"] == pytest.approx(sum(hits) / len(hits))


def test_frames_are_cached_by_content_and_time(tmp_path, clips, monkeypatch):
    """With --cache-images a second run answers every frame from the cache: no model loads. Other
    times of the same file are other keys: a run at every half second loads the model once, for
    the misses, and its frames at whole seconds are the first run's records."""
    from zeroshot.model import models

    path, _, _ = clips["vp9.webm"]
    args = ["classify", path, *MODEL, "--cache-images", "--every", "1", "--workers", "0"]
    first = invoke(*args, "--report", tmp_path / "sheet.html")
    assert first.exit_code == 0, first.output
    sheet = (tmp_path / "sheet.html").read_text()  # a card per frame, named by its time, with the frame
    assert sheet.count("<img ") == 6 and "vp9.webm @ 5 s" in sheet

    loads = []
    load_model = models.load_model

    def counted(*a, **k):
        loads.append(a)
        return load_model(*a, **k)

    monkeypatch.setattr(models, "load_model", counted)
    second = invoke(*args)
    assert second.exit_code == 0, second.output
    assert second.stdout == first.stdout and len(second.stdout.splitlines()) == 6
    assert loads == []
    again = invoke("classify", path, *MODEL, "--cache-images", "--every", "0.5", "--workers", "0")
    assert again.exit_code == 0, again.output
    assert len(loads) == 1
    records = [json.loads(line) for line in again.stdout.splitlines()]
    assert [(r["time"], "error" in r) for r in records] == [(0.5 * i, False) for i in range(11)]
    whole = [r for r in records if r["time"] % 1 == 0]
    for mine, was in zip(whole, [json.loads(line) for line in first.stdout.splitlines()], strict=True):
        assert [t["label"] for t in mine["top_k"]] == [t["label"] for t in was["top_k"]]
        # the same features; the batch they are scored in may move the last bit (4e-18 seen)
        near = [{**t, "score": pytest.approx(t["score"], abs=1e-12)} for t in was["top_k"]]
        assert mine == {**was, "score": pytest.approx(was["score"], abs=1e-12), "top_k": near}


def test_byte_caps_for_videos(clips):
    """--max-bytes, when given, caps videos too; --max-video-bytes caps them alone; each refusal
    names the option it comes from. Without either, a video over the image cap is read."""
    path, _, _ = clips["h264.mp4"]
    size = path.stat().st_size
    for option, shown in (("--max-bytes", "--max-bytes"), ("--max-video-bytes", "--max-video-bytes")):
        result = invoke("classify", path, *MODEL, "--workers", "0", option, "1000")
        assert result.exit_code == 1
        assert json.loads(result.stdout) == {
            "path": str(path), "error": f"too large: {size:,} bytes, over the {shown} limit of 1,000"
        }  # fmt: skip
    both = invoke("classify", path, *MODEL, "--workers", "0", "--max-bytes", "1000", "--max-video-bytes", "0")
    assert both.exit_code == 0 and len(both.stdout.splitlines()) == 6  # --max-video-bytes decides for videos
