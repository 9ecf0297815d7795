"""Throughput of `classify --engine ray` with 1 and 2 local workers, against the local engine.

Generates photo-like 640x480 JPEGs and a random-weights ViT-B-32 (speed does not depend on the
weights' values), starts one local Ray, and times, in the same process:

- the local engine (zeroshot.towers.pipeline.classify_inputs, default options), as the baseline;
- the Ray engine (zeroshot.engines.distributed.run, JSON Lines to a folder) with 1 worker of 1 CPU,
  2 workers of 1 CPU each, and 1 worker of all CPUs (GPU workers with --gpus-per-worker).

Ray's times are wall clock from submitting the dataset to the last file written, so they include
starting the actors and loading the model in each; --images sets how far that is amortized.

    .venv/bin/python benchmarks/ray_throughput.py [--images 256] [--model ViT-B-32] [--gpus-per-worker 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from _common import DEFAULT_WORK, machine, photo_jpegs, random_checkpoint, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--gpus-per-worker", type=float, default=0.0)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()
    os.environ["ZEROSHOT_CACHE_DIR"] = str(args.work / "cache")

    import ray

    from zeroshot.engines.distributed import SharedClassifier, run
    from zeroshot.image.images import iter_inputs
    from zeroshot.model.devices import resolve_device
    from zeroshot.model.models import load_model, resolve_spec
    from zeroshot.text.classifier import get_text_classifier
    from zeroshot.text.prompts import load_pack
    from zeroshot.uses.records import classify_inputs

    folder = args.work / f"photos-{args.images}"
    photo_jpegs(folder, args.images)
    spec = resolve_spec(args.model, str(random_checkpoint(args.work, args.model)))
    device = resolve_device("auto")
    loaded = load_model(spec, device)
    text = get_text_classifier(spec, load_pack("cifar10"), lambda: loaded)  # noqa: B023
    cores = len(os.sched_getaffinity(0))
    print(f"# {machine()}")
    print(f"# {args.model}, {args.images} JPEGs 640x480, batch {args.batch_size}, cifar10 labels")

    start = time.perf_counter()
    n = sum(1 for _ in classify_inputs(loaded, text, iter_inputs([str(folder)]), batch_size=args.batch_size))
    base = n / (time.perf_counter() - start)
    loaded = None  # free the baseline's model before the actors load theirs
    rows = [["local engine (baseline, default options)", f"{base:.2f}", "1.00"]]

    ray.init(include_dashboard=False, log_to_driver=False)
    shared = SharedClassifier.build(spec, text)
    gpus = args.gpus_per_worker
    gpu_count = int(ray.cluster_resources().get("GPU", 0))
    setups = [(1, 1.0), (2, 1.0), (1, float(cores))] if not gpus else [(1, 1.0), (min(2, max(1, gpu_count)), 1.0)]
    for workers, cpus in setups:
        out = args.work / "ray-out"
        shutil.rmtree(out, ignore_errors=True)
        summary = run([str(folder)], shared, str(out), workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                      batch_size=args.batch_size, quiet=True)  # fmt: skip
        assert summary["records"] == args.images and summary["errors"] == 0, summary
        ips = args.images / summary["seconds"]
        what = f"ray, {workers} worker{'s' if workers > 1 else ''} x {cpus:g} CPU"
        what += f" + {gpus:g} GPU" if gpus else ""
        rows.append([what, f"{ips:.2f}", f"{ips / base:.2f}"])
    ray.shutdown()
    print(table(rows, ["engine", "images/s", "x local"]))


if __name__ == "__main__":
    main()
