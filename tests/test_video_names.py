"""A video is the file its name names: never an FFmpeg protocol (``file:``, ``concat:``, ``pipe:``,
``subfile,,...:``), never a FIFO swapped in after the check, never read past its byte cap.

The clips: ``a.mp4`` (a bag), ``b.mp4`` (a coat) and ``c.mp4`` (a sandal), and copies of ``c.mp4``
under names FFmpeg would read as protocols over ``a.mp4`` and ``b.mp4``, all named relative to the
folder the command runs in (an absolute path starts with ``/``, which FFmpeg never reads as one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from zeroshot.model.models import BUNDLED_NAME

from .videos import EXAMPLES, make_video

ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))
MODEL = ["-m", BUNDLED_NAME, "--dataset", "fashion-mnist", "-q", "-k", "3", "--every", "0.5"]
NAMES = ["file:a.mp4", "concat:a.mp4|b.mp4", "pipe:0.mp4", "subfile,,start,0,end,0,,:a.mp4"]


def _example(name: str) -> Path:
    return sorted(EXAMPLES.glob(f"{name}-*.png"))[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("names")
    for name, picture in (("a.mp4", "bag"), ("b.mp4", "coat"), ("c.mp4", "sandal")):
        make_video(root / name, [(_example(picture), 1.5)])
    for name in NAMES:
        shutil.copyfile(root / "c.mp4", root / name)
    return root


def classify(folder: Path, *args: str, cache: Path | None = None) -> tuple[int, list[dict], str]:
    env = dict(os.environ)
    if cache is not None:
        env["ZEROSHOT_CACHE_DIR"] = str(cache)
    proc = subprocess.run([ZEROSHOT, "classify", *args, *MODEL], cwd=folder, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def without_path(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "path"} for r in records]


def thumbnails(sheet: str) -> dict[str, list[str]]:
    """The contact sheet's thumbnails (data URIs) by the path their cards name, in order."""
    out: dict[str, list[str]] = {}
    for uri, path in re.findall(r'<img alt="" src="([^"]+)"></div><div class="name" title="([^"]+)"', sheet):
        out.setdefault(path.replace("&amp;", "&").replace("&#x27;", "'"), []).append(uri)
    return out


def test_names_that_look_like_protocols_are_the_files_they_name(folder, tmp_path):
    """Each copy's records are ``c.mp4``'s, frame for frame, and so are its contact-sheet
    thumbnails: no name opens ``a.mp4`` or ``b.mp4``, and none is refused."""
    code, records, err = classify(folder, "c.mp4", *NAMES, "--report", str(tmp_path / "sheet.html"))
    assert code == 0 and err == "", err
    by_path: dict[str, list[dict]] = {}
    for r in records:
        by_path.setdefault(r["path"], []).append(r)
    assert list(by_path) == ["c.mp4", *NAMES]
    want = without_path(by_path["c.mp4"])
    assert [r["time"] for r in want] == [0.0, 0.5, 1.0] and {r["label"] for r in want} == {"sandal"}
    for name in NAMES:
        assert without_path(by_path[name]) == want, name
    thumbs = thumbnails((tmp_path / "sheet.html").read_text())
    assert len(thumbs["c.mp4"]) == 3
    for name in NAMES:
        assert thumbs.get(name) == thumbs["c.mp4"], name


def test_the_image_cache_keeps_each_files_own_frames(folder, tmp_path):
    """Frames of ``file:a.mp4`` are stored under its own content (``c.mp4``'s): a later run of
    ``c.mp4`` answered from the cache gives the sandal it shows, as a run with no cache does."""
    _, plain, _ = classify(folder, "c.mp4")
    cache = tmp_path / "cache"
    code, first, err = classify(folder, "file:a.mp4", "--cache-images", cache=cache)
    assert code == 0 and without_path(first) == without_path(plain), err
    code, again, err = classify(folder, "c.mp4", "--cache-images", cache=cache)
    assert code == 0 and again == plain, err
    code, bag, err = classify(folder, "a.mp4", "--cache-images", cache=cache)
    assert code == 0 and {r["label"] for r in bag} == {"bag"}, err


def _swapped_for_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _returns_soon(fn, fifo: Path, seconds: float = 20.0):
    """``fn()``'s result or exception, or a failure if it is still blocked after ``seconds`` (a
    writer is then opened on ``fifo`` to let it go)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except Exception as e:
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # a writer, then EOF: the blocked open returns
        os.close(fd)
        thread.join(10)
        pytest.fail(f"blocked on a FIFO for over {seconds:g} s")
    return box


def test_a_video_swapped_for_a_fifo_after_planning_is_refused_not_waited_on(tmp_path):
    """Planned as a regular file, then replaced by a FIFO before a worker decodes it or the contact
    sheet takes its thumbnail: both refuse it at once (the open never blocks, the check is on the
    descriptor that is read)."""
    from zeroshot.image import videodecode
    from zeroshot.image.video import VideoOptions, plan
    from zeroshot.uses.report import frame_thumbnail

    clip = tmp_path / "clip.mp4"
    make_video(clip, [(_example("bag"), 1.0)])
    frames = list(plan(str(clip), VideoOptions(every=0.5)))
    assert len(frames) == 2
    _swapped_for_fifo(clip)
    part = next(iter(videodecode.parts(frames)))
    box = _returns_soon(lambda: videodecode.decode_part(part, lambda im: im, None), clip)
    assert box == {"value": [(None, "not a regular file: a FIFO")] * 2}
    box = _returns_soon(lambda: videodecode.frame_at(str(clip), 0.5), clip)
    assert str(box.get("error")) == "not a regular file: a FIFO"
    assert _returns_soon(lambda: frame_thumbnail(str(clip), 0.5), clip) == {"value": None}


def test_a_video_that_grows_while_read_is_refused_at_its_cap(tmp_path):
    """The cap holds while FFmpeg reads, not only on the size the file had when opened: a stream
    that goes on past ``--max-video-bytes`` is refused with the option's name."""
    from zeroshot.image.images import ImageError
    from zeroshot.image.video import open_video

    clip = tmp_path / "clip.ts"
    make_video(clip, [(_example("bag"), 2.0), (_example("coat"), 2.0)], gop=10)
    data = clip.read_bytes()
    cap = len(data) + 1000
    with open_video(str(clip), cap, "--max-video-bytes") as video:
        with clip.open("ab") as f:  # the file grows after the check on its size
            f.write(data)
        with pytest.raises(ImageError) as refused:
            for _ in video.container.demux(video.container.streams.video[0]):
                pass
    assert str(refused.value) == f"too large: more than the --max-video-bytes limit of {cap:,} bytes"
