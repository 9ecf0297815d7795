"""The CUDA path as users run it, in fresh processes of the CLI: records against the CPU's, and speed.

For the bundled fashion-mini on the 40 example images, and for ViT-B-32 with random weights (a
local checkpoint this script writes) on photo-sized JPEGs:

- ``--device cpu --runtime torch`` fp32 is the reference; ``--device cuda`` at fp32 with Pillow
  decoding must give the same labels and probabilities within 1e-4; fp16 and bf16 (and ``auto``,
  which is fp16 on CUDA, torch runtime), and the default decoder (JPEGs decoded on the device), are
  reported as their largest probability difference and label agreement;
- ``classify`` images/s on CUDA (from the run's own manifest: "ready" to the end) and the ImageNet
  pack's text classifier (``build-prompts --dataset imagenet``, 80,000 prompts) on CUDA.

Needs a GPU; without one it says so and exits 0. ``--images N`` sets the JPEG count.

    python benchmarks/cuda_check.py [--images 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import DEFAULT_WORK, machine, photo_jpegs, table  # noqa: E402

ZEROSHOT = [sys.executable, "-m", "zeroshot"]
EXAMPLES = sorted(str(p) for p in (HERE.parent / "examples" / "fashion").glob("*.png"))


def classify(args: list[str], manifest: Path) -> tuple[list[dict], dict, float]:
    began = time.perf_counter()
    done = subprocess.run([*ZEROSHOT, "classify", *args, "--manifest", str(manifest)], capture_output=True, text=True)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"classify {' '.join(args[-8:])} failed ({done.returncode}):\n{done.stderr}")
    if done.stderr.strip():
        print(f"  stderr: {done.stderr.strip()[-300:]}", file=sys.stderr)
    return [json.loads(line) for line in done.stdout.splitlines()], json.loads(manifest.read_text()), took


def compare(a: list[dict], b: list[dict]) -> tuple[float, int]:
    worst, same = 0.0, 0
    for x, y in zip(a, b, strict=True):
        got = {t["label"]: t["score"] for t in y["top_k"]}
        worst = max(worst, *(abs(t["score"] - got.get(t["label"], 0.0)) for t in x["top_k"]))
        same += x["label"] == y["label"]
    return worst, same


def random_checkpoint(work: Path) -> Path:
    """ViT-B-32 with open_clip's own random initialization, saved as safetensors (fp32)."""
    path = work / "vit-b-32-random.safetensors"
    if not path.exists():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def parity(name: str, images: list[str], model: list[str], work: Path, device: str) -> list[list[str]]:
    reference, m, _ = classify([*images, *model, "--device", "cpu", "--runtime", "torch", "--precision", "fp32"],
                               work / "cpu.json")  # fmt: skip
    rows = []
    # Pillow decodes on both sides, so the differences are the model's; then the default decoder
    # (nvJPEG for JPEGs on CUDA), whose pixels differ from libjpeg's by design.
    runs = [(p, "pillow") for p in ("fp32", "fp16", "bf16", "auto")] + [("fp32", "auto")]
    for precision, decoder in runs:
        records, m, _ = classify([*images, *model, "--device", device, "--precision", precision, "--decoder", decoder],
                                 work / f"cuda-{precision}.json")  # fmt: skip
        worst, same = compare(reference, records)
        exact = precision == "fp32" and decoder == "pillow"
        verdict = ("ok" if worst <= 1e-4 and same == len(records) else "FAILED") if exact else "-"
        rows.append([name, f"{device} {precision} -> {m.get('precision')}, {m.get('runtime')}, {decoder}",
                     f"{worst:.1e}", f"{same}/{len(records)}", verdict])  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="photo-sized JPEGs for the speed figure")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script's own logic")
    args = parser.parse_args()
    print(machine(), flush=True)
    import torch

    gpu = args.device
    if gpu == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return
    work = DEFAULT_WORK / "cuda-check"
    work.mkdir(parents=True, exist_ok=True)
    fashion = ["-m", "fashion-mini", "--dataset", "fashion-mnist", "-k", "3", "-q"]
    checkpoint = random_checkpoint(work)
    vit = ["-m", "ViT-B-32", "-p", str(checkpoint), "--dataset", "cifar10", "-k", "5", "-q"]
    photos = [str(p) for p in photo_jpegs(work / "photos", args.images)]
    rows = parity("fashion-mini", EXAMPLES, fashion, work, gpu)
    rows += parity("ViT-B-32 (random)", photos[:64], vit, work, gpu)
    print(table(rows, ["model", "run", "max |dp| vs cpu fp32", "same label", "fp32 within 1e-4"]), flush=True)

    speed = []
    for precision in ("fp16", "fp32"):
        for batch in ("64", "256"):
            _, m, took = classify([*photos, *vit, "--device", gpu, "--precision", precision, "-b", batch],
                                  work / "speed.json")  # fmt: skip
            seconds = m["seconds"]["total"] - m["seconds"]["ready"]
            speed.append([f"ViT-B-32 {precision}, batch {batch}", f"{len(photos) / seconds:.1f}", f"{took:.1f}",
                          str(m.get("image_tower", "?"))])  # fmt: skip
    print(table(speed, [f"classify {len(photos)} 640x480 JPEGs on CUDA", "images/s (ready to end)", "wall s",
                        "image tower"]), flush=True)  # fmt: skip

    began = time.perf_counter()
    build = ["build-prompts", "--dataset", "imagenet", "-m", "ViT-B-32", "-p", str(checkpoint), "--device", gpu]
    done = subprocess.run([*ZEROSHOT, *build, "-o", str(work / "imagenet.safetensors")], capture_output=True, text=True)
    took = time.perf_counter() - began
    print(f"build-prompts --dataset imagenet on CUDA (80,000 prompts): exit {done.returncode}, {took:.1f} s wall")
    if done.returncode != 0:
        print(done.stderr[-2000:])


if __name__ == "__main__":
    main()
