"""The CPU engine against torch, all in one run: the bare image tower and ``classify`` end to end.

For ViT-B-32, ViT-B-16 and ViT-B-16-SigLIP (random weights of the real architectures, published on
the tests' stand-in Hugging Face Hub, downloaded through open_clip's real path):

- the bare image tower on random pixels, batch 32 (16 for the /16 models): torch eager, ONNX
  Runtime fp32 and ONNX Runtime int8, images/s and the ratio to torch;
- ``zeroshot classify`` on 640x480 JPEGs with ``--runtime torch``, ``--runtime onnx`` and
  ``--runtime onnx --precision int8`` (exports made beforehand, text classifier cached): images/s
  from the run's own manifest (from "ready" to the end: decoding and the model, not start-up), and
  the ratio to the bare ONNX Runtime session of the same precision;
- how ONNX Runtime's threads share the cores with the decoding workers (``--workers``,
  ``ZEROSHOT_ONNX_THREADS``), for ViT-B-32 fp32.

The CPU's model name and flags come first: compare figures only within one run.

    .venv/bin/python benchmarks/runtimes.py [--images 96] [--models ViT-B-32,ViT-B-16,ViT-B-16-SigLIP]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import DEFAULT_WORK, cpu, photo_jpegs, table  # noqa: E402

ZEROSHOT = [sys.executable, "-m", "zeroshot"]
HEADER = ["model", "what", "torch img/s", "onnx fp32", "onnx int8", "fp32 x torch", "int8 x torch",
          "classify fp32 x bare", "classify int8 x bare"]  # fmt: skip
TAGS = {"ViT-B-32": "openai", "ViT-B-16": "openai", "ViT-B-16-SigLIP": "webli"}


def publish(work: Path, models: list[str]) -> tuple[object, dict[str, str]]:
    from tests.standin_hub import StandInHub, hub_env, publish_tag, publish_tokenizer

    hub = StandInHub(work / "hub")
    for name in models:
        publish_tag(hub, name, TAGS[name])
        publish_tokenizer(hub, name)
    env = hub_env(hub, work / "hf")  # type: ignore[arg-type]
    env["ZEROSHOT_CACHE_DIR"] = str(work / "cache")
    return hub, env


def bare(name: str, env: dict[str, str], batch: int, rounds: int = 3) -> dict[str, float]:
    """The image tower alone, images/s: torch, ONNX Runtime fp32 and int8 (exports made by zeroshot)."""
    code = f"""
import json, os, statistics, time
import numpy as np, torch
from zeroshot.model.models import load_model, resolve_spec
from zeroshot.towers.onnxexport import tower_for
from zeroshot.towers.onnxexport import input_shape
loaded = load_model(resolve_spec({name!r}, {TAGS[name]!r}))
x = torch.randn(({batch}, *input_shape(loaded)))
def rate(fn):
    fn()
    times = []
    for _ in range({rounds}):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return {batch} / statistics.median(times)
out = {{}}
with torch.inference_mode():
    out["torch"] = rate(lambda: loaded.model.encode_image(x))
for precision in ("fp32", "int8"):
    tower, why = tower_for(loaded, precision)
    assert tower is not None, why
    xn = x.numpy()
    out[precision] = rate(lambda: tower.session.run(None, {{tower.input_name: xn}}))
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def classify(name: str, env: dict[str, str], images: Path, labels: Path, extra: list[str]) -> float:
    """``classify`` over the folder, images/s from the manifest (ready -> total)."""
    manifest = images.parent / "run.manifest.json"
    cmd = [*ZEROSHOT, "classify", str(images), "-m", name, "-p", TAGS[name], "--labels", str(labels), "-q",
           "-o", str(images.parent / "out.jsonl"), "--manifest", str(manifest), *extra]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    m = json.loads(manifest.read_text())
    n = m["records"]
    return n / (m["seconds"]["total"] - m["seconds"]["ready"])


def accuracy(env: dict[str, str]) -> None:
    """``eval`` on the 10,000 Fashion-MNIST test images with fashion-mini: torch, onnx fp32, int8."""
    rows = []
    for label, extra in (("torch fp32", ["--runtime", "torch"]), ("onnx fp32", ["--runtime", "onnx"]),
                         ("onnx int8", ["--runtime", "onnx", "--precision", "int8"])):  # fmt: skip
        cmd = [*ZEROSHOT, "eval", "--dataset", "fashion-mnist", "-m", "fashion-mini", "-q", *extra]
        subprocess.run(cmd, env=env, capture_output=True, text=True)  # exports, text classifier: once
        began = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        took = time.perf_counter() - began
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        rec = json.loads(done.stdout)
        rows.append([label, str(rec["images"]), f"{100 * rec['top1']:.2f}", f"{100 * rec['top5']:.2f}",
                     f"{100 * rec['mean_per_class_recall']:.2f}", f"{took:.1f}"])  # fmt: skip
    print("\nfashion-mini on the Fashion-MNIST test split (zeroshot eval --dataset fashion-mnist):")
    print(table(rows, ["engine", "images", "top-1 %", "top-5 %", "mean recall %", "seconds (run)"]), flush=True)


def text_side(env: dict[str, str], work: Path, classes: int) -> None:
    """``build-prompts --dataset imagenet`` (80 templates x ``classes`` classes) for ViT-B-32 with
    the torch text tower (prefix sharing, trimmed batches) and ONNX Runtime's (trimmed batches):
    seconds, and the largest difference between the two classifiers."""
    import numpy as np
    from safetensors.numpy import load_file

    from zeroshot.text.prompts import load_pack

    labels = work / "imagenet-classes.txt"
    labels.write_text("\n".join(load_pack("imagenet").classes[:classes]) + "\n")
    rows, weights = [], {}
    for runtime in ("torch", "onnx"):
        out = work / f"imagenet-{runtime}.safetensors"
        cmd = [*ZEROSHOT, "build-prompts", "--dataset", "imagenet", "--labels", str(labels), "-m", "ViT-B-32", "-p",
               "openai", "--runtime", runtime, "--force", "-q", "-o", str(out)]  # fmt: skip
        if runtime == "onnx":  # the text tower's export, once, outside the timing
            warm = [*ZEROSHOT, "build-prompts", "--label", "x", "-m", "ViT-B-32", "-p", "openai", "--runtime", "onnx"]
            subprocess.run(warm, env=env, capture_output=True)
        began = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        took = time.perf_counter() - began
        if done.returncode != 0:
            raise SystemExit(done.stderr[-2000:])
        weights[runtime] = load_file(str(out))["weights"]
        rows.append([runtime, str(80 * classes), f"{took:.1f}", f"{80 * classes / took:.1f}"])
    diff = float(np.abs(weights["torch"] - weights["onnx"]).max())
    print(f"\nbuild-prompts --dataset imagenet ({classes} classes), ViT-B-32 text tower; max |difference| {diff:.1e}:")
    print(table(rows, ["text tower", "prompts", "seconds (run)", "prompts/s"]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--models", default=",".join(TAGS))
    parser.add_argument("--no-eval", dest="eval", action="store_false", help="skip the Fashion-MNIST accuracy runs")
    parser.add_argument("--text-classes", type=int, default=1000,
                        help="ImageNet classes for the text-tower timing (0: skip; 1000: the whole pack)")  # fmt: skip
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    work = DEFAULT_WORK / "runtimes"
    shutil.rmtree(work / "cache", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    print(cpu())
    import torch

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); ", end="")
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}")
    hub, env = publish(work, models)
    folder = work / "photos"
    photo_jpegs(folder, args.images)
    labels = work / "labels.txt"
    labels.write_text("cat\ndog\ncar\ntree\nhouse\nperson\nbicycle\nboat\n")
    rows = []
    for name in models:
        batch = 32 if name.endswith("32") else 16
        tower = bare(name, env, batch)
        runs = {}
        for label, extra in (("torch", ["--runtime", "torch"]), ("fp32", ["--runtime", "onnx"]),
                             ("int8", ["--runtime", "onnx", "--precision", "int8"])):  # fmt: skip
            classify(name, env, folder, labels, extra)  # the export and the text classifier, once
            runs[label] = classify(name, env, folder, labels, extra)
        ratio = lambda a, b: f"{a / b:.2f}"  # noqa: E731
        bare_row = [f"{tower[k]:.1f}" for k in ("torch", "fp32", "int8")]
        rows.append([f"{name} (batch {batch})", "bare tower", *bare_row, ratio(tower["fp32"], tower["torch"]),
                     ratio(tower["int8"], tower["torch"]), "-", "-"])  # fmt: skip
        run_row = [f"{runs[k]:.1f}" for k in ("torch", "fp32", "int8")]
        rows.append([name, f"classify, {args.images} JPEGs", *run_row, ratio(runs["fp32"], runs["torch"]),
                     ratio(runs["int8"], runs["torch"]), ratio(runs["fp32"], tower["fp32"]),
                     ratio(runs["int8"], tower["int8"])])  # fmt: skip
        print(table(rows[-2:], HEADER), flush=True)
    print()
    print(table(rows, HEADER))
    if args.eval:
        accuracy(env)
    if args.text_classes:
        text_side(env, work, args.text_classes)
    if "ViT-B-32" in models:
        split = []
        for workers in (1, 2):
            for threads in (1, 2):
                e = {**env, "ZEROSHOT_ONNX_THREADS": str(threads)}
                rate = classify("ViT-B-32", e, folder, labels, ["--runtime", "onnx", "--workers", str(workers)])
                split.append([str(workers), str(threads), f"{rate:.1f}"])
        print("\nViT-B-32 fp32, decoding workers and ONNX Runtime threads:")
        print(table(split, ["--workers", "ZEROSHOT_ONNX_THREADS", "classify img/s"]))
    del hub


if __name__ == "__main__":
    main()
