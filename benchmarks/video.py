"""Video throughput: sampled frames per second end to end, next to the image rate, in one process.

A 640x480 H.264 clip (photo-like frames with a moving disc, 30 frames a second) is made with PyAV;
the same model (random-weights ViT-B-32 unless --model/--pretrained say otherwise) then classifies:

- the clip at several ``--every`` (every frame; 0.2 s; 1 s; 10 s): sampled frames per second, end
  to end (planning, seeking, decoding the frames needed, preprocessing, model, records);
- as many 640x480 JPEGs as the densest run has frames: the image rate, the baseline;
- with a keyframe every second (a phone's group of pictures) and every 10 s (x264's default): how
  much skipping the groups with no sampled frame saves at a sparse ``--every``.

    .venv/bin/python benchmarks/video.py [--seconds 60] [--runtime auto|torch|onnx]
"""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_WORK, cpu, machine, photo_jpegs, random_checkpoint, table  # noqa: E402


def make_clip(path: Path, seconds: int, gop: int, fps: int = 30) -> Path:
    """``seconds`` of 640x480 H.264 at ``fps``: photo-like backgrounds changing every 2 s, a moving disc."""
    if path.exists():
        return path
    import av
    import numpy as np
    from PIL import Image

    backgrounds = [np.asarray(Image.open(p).convert("RGB")) for p in photo_jpegs(path.parent / "bg", 8)]
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"sc_threshold": "0"}  # keyframes only where the gop says
        yy, xx = np.mgrid[0:480, 0:640]
        for n in range(seconds * fps):
            a = backgrounds[(n // (2 * fps)) % len(backgrounds)].copy()
            cx, cy = 320 + int(200 * np.sin(n / 20)), 240 + int(150 * np.cos(n / 27))
            a[(xx - cx) ** 2 + (yy - cy) ** 2 < 40**2] //= 3
            frame = av.VideoFrame.from_ndarray(a, format="rgb24")
            frame.pts = n
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.replace(path)
    return path


def rate(zs: Any, text: Any, inputs: list[str], **kw: Any) -> tuple[float, int, float]:
    """(records per second, records, seconds) for one classify run over ``inputs``."""
    start = time.perf_counter()
    n = sum(1 for _ in zs.classify(inputs, text, top_k=3, **kw))
    seconds = time.perf_counter() - start
    return n / seconds, n, seconds


def decode_everything(path: str) -> float:
    """Seconds PyAV takes to decode every frame of ``path`` to RGB (what skipping saves)."""
    import av

    start = time.perf_counter()
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60, help="length of the clip")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default=None, help="default: random weights of --model")
    ap.add_argument("--runtime", default="auto")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK / "video")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from zeroshot import Zeroshot
    from zeroshot.text.prompts import resolve_prompt_set

    pretrained = args.pretrained or str(random_checkpoint(DEFAULT_WORK, args.model))
    zs = Zeroshot(args.model, pretrained, device="cpu", runtime=args.runtime)
    text = zs.text_classifier(resolve_prompt_set(dataset="cifar10"))
    clips = {gop: str(make_clip(args.work / f"clip-{args.seconds}s-gop{gop}.mp4", args.seconds, gop)) for gop in
             (30, 300)}  # fmt: skip
    print(machine())
    print(f"model {args.model} ({'random weights' if not args.pretrained else args.pretrained}), runtime "
          f"{zs.runtime}, clip {args.seconds} s of 640x480 H.264 at 30 fps")  # fmt: skip
    rate(zs, text, [clips[30]], every=1.0, max_frames=4)  # warm-up: the ONNX export, the worker pool
    rows = []
    dense = 0
    for gop in (30, 300):
        for every in (1 / 30, 0.2, 1.0, 10.0):
            fps, n, seconds = rate(zs, text, [clips[gop]], every=every)
            dense = max(dense, n)
            rows.append([f"video, keyframe every {gop // 30} s", f"{every:.3g}", str(n), f"{seconds:.2f}",
                         f"{args.seconds / seconds:.3g}", f"{fps:.1f}"])  # fmt: skip
    jpegs = [str(p) for p in photo_jpegs(args.work / "jpegs", min(dense, 512))]
    img_fps, n, seconds = rate(zs, text, jpegs)
    rows.append(["640x480 JPEG files (baseline)", "-", str(n), f"{seconds:.2f}", "-", f"{img_fps:.1f}"])
    for r in rows[:-1]:
        r.append(f"{float(r[5]) / img_fps:.2f}x")
    rows[-1].append("1.00x")
    print(table(rows, ["input", "--every (s)", "records", "seconds", "video s per s", "records/s", "vs images"]))
    for gop in (30, 300):
        print(f"PyAV alone, every frame of the clip (keyframe every {gop // 30} s) decoded to RGB: "
              f"{decode_everything(clips[gop]):.2f} s")  # fmt: skip
    print(cpu())


if __name__ == "__main__":
    main()
