"""First contact on this machine: one image through the CLI, and relabelling cached images, each
against ``python -c "import torch"`` timed in the same run.

ViT-B-32 (openai) with random fp32 weights (605 MB, the real file's size) is published on the
tests' stand-in Hugging Face Hub and downloaded once into a Hugging Face cache of its own; then:

1. ``zeroshot classify one.jpg --labels labels.txt -o out.jsonl`` with the weights and the text
   classifier cached: wall time against ``import torch``; the breakdown comes from the run's own
   manifest (imports, model build, text side ready, first record), and the Hub requests it made
   (none: the cache serves everything);
2. 1,000 photo-sized JPEGs classified once with ``--cache-images``, new labels built with
   ``build-prompts``, then relabelled with ``--cache-images``: wall time against ``import torch``.

    .venv/bin/python benchmarks/cold_start.py [--rounds 3] [--images 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import DEFAULT_WORK, machine, photo_jpegs, table  # noqa: E402

ZEROSHOT = [sys.executable, "-m", "zeroshot"]


def wall(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return took


def to_first_line(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds until the first line reaches stdout, seconds until the process has exited)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()
    first = time.perf_counter() - start
    proc.stdout.read()
    if proc.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    return first, time.perf_counter() - start


def publish(work: Path) -> tuple[object, dict[str, str]]:
    """The stand-in Hub serving ViT-B-32 (openai) in fp32, and the environment that uses it."""
    from safetensors.torch import load_file, save_file

    from tests.standin_hub import StandInHub, hub_env, publish_tag

    hub = StandInHub(work / "hub")
    weights = work / "hub" / "timm" / "vit_base_patch32_clip_224.openai" / "open_clip_model.safetensors"
    if not weights.exists():
        _, _, _ = publish_tag(hub, "ViT-B-32", "openai")
        state = load_file(str(weights))  # fp16 as published; the real file is fp32
        save_file({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, str(weights))
    env = hub_env(hub, work / "hf")  # type: ignore[arg-type]
    env["ZEROSHOT_CACHE_DIR"] = str(work / "cache")
    return hub, env


def one_image(runtime: str, one: Path, labels: Path, work: Path, hub: object, env: dict[str, str], rounds: int) -> None:
    """One image with ``--runtime runtime``, everything cached (the first run downloads, builds the
    text classifier and, for onnx, exports the towers), against ``import torch``."""
    out = work / f"out-{runtime}.jsonl"
    first = [*ZEROSHOT, "classify", str(one), "--labels", str(labels), "-q", "-o", str(out), "--runtime", runtime]
    print(f"--runtime {runtime}: first run (download if not cached yet, text classifier, export): "
          f"{wall(first, env):.1f} s", file=sys.stderr)  # fmt: skip
    reference = out.read_text()
    to_stdout = [*ZEROSHOT, "classify", str(one), "--labels", str(labels), "-q", "--runtime", runtime]
    torch_s, cli_s, record_s, manifests, requests = [], [], [], [], []
    for _ in range(rounds):
        torch_s.append(wall([sys.executable, "-c", "import torch"], env))
        before = len(hub.requests)  # type: ignore[attr-defined]
        cli_s.append(wall(first, env))
        requests.append(len(hub.requests) - before)  # type: ignore[attr-defined]
        manifests.append(json.loads(Path(f"{out}.manifest.json").read_text()))
        assert out.read_text() == reference, "records changed between runs"
        record_s.append(to_first_line(to_stdout, env)[0])
    t, c, f = statistics.median(torch_s), statistics.median(cli_s), statistics.median(record_s)
    s = {k: statistics.median(m["seconds"].get(k, 0.0) for m in manifests) for k in manifests[0]["seconds"]}
    rows = [
        ["python -c 'import torch'", f"{t:.2f}", "1.00"],
        ["zeroshot classify one.jpg: the record on stdout", f"{f:.2f}", f"{f / t:.2f}"],
        ["zeroshot classify one.jpg -o FILE: to exit", f"{c:.2f}", f"{c / t:.2f}"],
        ["  in the command: open_clip + torch imports", f"{s.get('model_import', 0):.2f}", ""],
        ["  in the command: model build + weights", f"{s.get('model_load', 0):.2f}", ""],
        ["  in the command: model and text side ready", f"{s['ready']:.2f}", ""],
        ["  in the command: first record", f"{s['first_record']:.2f}", ""],
        ["  in the command: total", f"{s['total']:.2f}", ""],
        ["  interpreter, CLI start and exit (wall - total)", f"{c - s['total']:.2f}", ""],
        ["  requests to the Hub (cached run)", str(max(requests)), ""],
        ["  image tower (manifest)", manifests[-1]["image_tower"], ""],
    ]
    print(table(rows, [f"one image, ViT-B-32 cached, --runtime {runtime}", "seconds", "x import torch"]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each command (medians reported)")
    parser.add_argument("--images", type=int, default=1000, help="images relabelled from the cache")
    args = parser.parse_args()
    work = DEFAULT_WORK / "cold-start"
    for fresh in ("cache", "hf"):  # every run starts with empty caches: the first pass is a real one
        shutil.rmtree(work / fresh, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    print(machine())
    hub, env = publish(work)
    (one,) = photo_jpegs(work / "one", 1)
    labels, relabels = work / "labels.txt", work / "relabels.txt"
    labels.write_text("cat\ndog\ncar\ntree\n")
    relabels.write_text("apple\nbanana\ncherry\ngrape\n")
    for runtime in ("torch", "onnx"):
        one_image(runtime, one, labels, work, hub, env, args.rounds)

    folder = work / "photos"
    photo_jpegs(folder, args.images)
    cached = [*ZEROSHOT, "classify", str(folder), "--cache-images", "-q"]
    print(
        f"first pass over {args.images} images: {wall([*cached, '--labels', str(labels)], env):.1f} s", file=sys.stderr
    )
    wall([*ZEROSHOT, "build-prompts", "--labels", str(relabels), "-q"], env)
    relabel = [*cached, "--labels", str(relabels), "-o", str(work / "relabel.jsonl")]
    torch_s, relabel_s = [], []
    for _ in range(args.rounds):
        torch_s.append(wall([sys.executable, "-c", "import torch"], env))
        relabel_s.append(wall(relabel, env))
    t, r = statistics.median(torch_s), statistics.median(relabel_s)
    tower = json.loads((work / "relabel.jsonl.manifest.json").read_text())["image_tower"]
    print(table([["python -c 'import torch'", f"{t:.2f}", "1.00", ""],
                 [f"relabel {args.images} cached images", f"{r:.2f}", f"{r / t:.2f}", tower]],
                ["relabelling", "seconds", "x import torch", "image tower"]))  # fmt: skip
    hub.close()  # type: ignore[attr-defined]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
