"""Relabelling with the image-embedding cache (``--cache-images``) against the first pass.

1,000 photo-sized JPEGs, random-weights ViT-B-32 unless told otherwise. In one process:

1. first pass: classify with CIFAR-10's classes and an empty image cache (decode + image tower +
   storing each embedding);
2. relabel: classify the same files with CIFAR-100's classes (a new text classifier, built before
   the clock starts): every image is a cache hit, so a run is read + hash + lookup + matrix multiply;
3. check: on a sample, the relabelled records equal a run without the cache (scores within 1e-6).

Then the same relabel through the CLI, wall clock, interpreter start included: with the text
classifier and every embedding cached, the CLI loads no model and imports no torch.

    .venv/bin/python benchmarks/image_cache.py [--images 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DEFAULT_WORK, Timer, machine, photo_jpegs, random_checkpoint, table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--check", type=int, default=64, help="images compared against an uncached run")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = ap.parse_args()

    cache_dir = args.work / "image-cache-run"
    shutil.rmtree(cache_dir, ignore_errors=True)
    os.environ["ZEROSHOT_CACHE_DIR"] = str(cache_dir)

    from zeroshot import resolve_prompt_set
    from zeroshot.image.imagecache import ImageEmbeddingCache
    from zeroshot.image.images import Input
    from zeroshot.model.models import load_model, resolve_spec
    from zeroshot.model.weightfiles import image_cache_key
    from zeroshot.text.classifier import get_text_classifier
    from zeroshot.uses.records import classify_inputs

    folder = args.work / f"photos-{args.images}"
    paths = [str(p) for p in photo_jpegs(folder, args.images)]
    ckpt = args.pretrained or str(random_checkpoint(args.work, args.model))
    spec = resolve_spec(args.model, ckpt)
    loaded = load_model(spec, "cpu")
    first_set, new_set = resolve_prompt_set(dataset="cifar10"), resolve_prompt_set(dataset="cifar100")
    first_text = get_text_classifier(spec, first_set, lambda: loaded)
    new_text = get_text_classifier(spec, new_set, lambda: loaded)
    print(f"# {machine()}")
    print(f"# {args.model} on cpu, {len(paths)} JPEGs 640x480")

    def run(text, cache):
        return list(classify_inputs(loaded, text, (Input(p) for p in paths), image_cache=cache))

    cache = ImageEmbeddingCache(image_cache_key(loaded), loaded.embed_dim)
    with Timer() as first:
        run(first_text, cache)
    with Timer() as relabel:
        relabelled = run(new_text, cache)
    cache.close()
    ratio = first.seconds / relabel.seconds

    sample = paths[: args.check]
    direct = list(classify_inputs(loaded, new_text, (Input(p) for p in sample)))
    worst = max(abs(a["score"] - b["score"]) for a, b in zip(relabelled[: len(sample)], direct, strict=True))
    same_labels = all(a["label"] == b["label"] for a, b in zip(relabelled, direct, strict=False))

    env = dict(os.environ)
    cli = [sys.executable, "-m", "zeroshot", "classify", str(folder), "--dataset", "cifar100", "-m", args.model,
           "-p", ckpt, "--cache-images", "-q"]  # fmt: skip
    with Timer() as cli_t:
        subprocess.run(cli, env=env, check=True, stdout=subprocess.DEVNULL)

    rows = [
        ["first pass (cifar10 classes, empty image cache)", f"{first.seconds:.2f} s",
         f"{len(paths) / first.seconds:.1f} img/s", "1"],
        ["relabel (cifar100 classes, every image cached)", f"{relabel.seconds:.3f} s",
         f"{len(paths) / relabel.seconds:.0f} img/s", f"{ratio:.0f}x faster"],
        ["relabel through the CLI (a whole process; no model loaded)", f"{cli_t.seconds:.2f} s",
         f"{len(paths) / cli_t.seconds:.0f} img/s", f"{first.seconds / cli_t.seconds:.1f}x faster"],
    ]  # fmt: skip
    print(table(rows, ["what", "time", "rate", "vs first pass"]))
    print(f"# relabelled vs uncached, {len(sample)} images: max |d score| {worst:.1e}, same labels: {same_labels}")


if __name__ == "__main__":
    main()
