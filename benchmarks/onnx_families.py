"""Every family in ``catalog.FAMILIES`` on the CPU engine against torch, as users run it.

Each family's smallest tagged model is published with random weights on the tests' stand-in
Hugging Face Hub. The installed ``zeroshot`` console script then runs in fresh processes: once with
``--runtime torch``, then with ``--runtime onnx`` at batch sizes 1, 3 and 32 (the first ONNX run
exports the towers). Each run classifies the same 33 images, so the batches of 32 are real.

For each family the table gives: where it ran (ONNX Runtime, or torch with the reason it fell
back), the export's own check against torch, and the largest probability difference from the torch
records at each batch size, with whether every label matched.

    .venv/bin/python benchmarks/onnx_families.py [--only ViT-B-32,RN50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import DEFAULT_WORK, cpu, table  # noqa: E402

ZEROSHOT = str(Path(sys.executable).with_name("zeroshot"))
LABELS = ["cat", "dog", "car", "tree"]


def images(folder: Path, n: int = 33) -> list[str]:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        rng = np.random.default_rng(i)
        w, h = 96 + 5 * i, 160 - 3 * i
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        path = folder / f"{i:02d}.png"
        img.save(path)
        out.append(str(path))
    return out


def run(env: dict[str, str], pictures: list[str], name: str, tag: str, *extra: str) -> tuple[list[dict], str, float]:
    cmd = [ZEROSHOT, "classify", *pictures, "-m", name, "-p", tag, "-k", str(len(LABELS)), "--workers", "1"]
    cmd += [a for label in LABELS for a in ("--label", label)] + list(extra)
    began = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - began
    if done.returncode != 0:
        return [], done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}", took
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr, took


def compare(a: list[dict], b: list[dict]) -> tuple[float, bool]:
    worst, same = 0.0, True
    for x, y in zip(a, b, strict=True):
        got = {t["label"]: t["score"] for t in y["top_k"]}
        worst = max(worst, *(abs(t["score"] - got[t["label"]]) for t in x["top_k"]))
        same &= x["label"] == y["label"]
    return worst, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated model names (default: every family)")
    args = parser.parse_args()
    from tests.standin_hub import StandInHub, hub_env, publish_tag, publish_tokenizer
    from zeroshot.model.catalog import FAMILIES

    chosen = [f for f in FAMILIES if not args.only or f[1] in args.only.split(",")]
    work = DEFAULT_WORK / "onnx-families"
    shutil.rmtree(work, ignore_errors=True)
    print(cpu(), flush=True)
    hub = StandInHub(work / "hub")
    pictures = images(work / "images")
    rows = []
    for family, name, tag in chosen:
        publish_tag(hub, name, tag)
        publish_tokenizer(hub, name)
        env = hub_env(hub, work / "hf")
        env["ZEROSHOT_CACHE_DIR"] = str(work / "cache")
        reference, err, t_torch = run(env, pictures, name, tag, "--runtime", "torch", "-b", "32")
        if not reference:
            rows.append([family, name, f"torch run failed: {err[:80]}", "", "", "", "", "", ""])
            continue
        cells, engine, exported = [], "onnx", ""
        for batch in ("1", "3", "32"):
            got, err, took = run(env, pictures, name, tag, "--runtime", "onnx", "-b", batch)
            if not got:
                cells.append(f"failed: {err[:60]}")
                continue
            if "runs on torch, not ONNX Runtime" in err:
                engine = "torch: " + err.split("not ONNX Runtime: ", 1)[1].splitlines()[0][:90]
            if batch == "1":
                exported = f"{took:.0f} s (first run, export included)"
            worst, same = compare(reference, got)
            cells.append(f"{worst:.1e}" + ("" if same else " (labels differ)"))
        metas = [json.loads(p.read_text()) for p in (work / "cache" / "onnx").glob("*/meta.json")]
        check = [m for m in metas if name in m["key"] and '"onnx-image-tower"' in m["key"]]
        checked = f"cos {check[0]['min_cosine']:.7f}" if check else "-"
        spread = max(r["top_k"][0]["score"] - r["top_k"][-1]["score"] for r in reference)  # can it fail?
        rows.append([family, f"{name} ({tag})", engine, checked, f"{spread:.2f}", *cells, exported])
        print(table(rows[-1:], HEADER), flush=True)
        shutil.rmtree(work / "cache" / "onnx", ignore_errors=True)  # gigabytes for the big ones
        shutil.rmtree(work / "hf", ignore_errors=True)
        for repo in (work / "hub").iterdir():
            shutil.rmtree(repo, ignore_errors=True)
    print()
    print(table(rows, HEADER))
    os._exit(0)


HEADER = ["family", "model", "image tower runs on", "export check", "p spread", "max |dp| b1", "b3", "b32",
          "first onnx run"]  # fmt: skip

if __name__ == "__main__":
    main()
