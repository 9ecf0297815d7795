"""Few-shot adaptation (``zeroshot adapt``) against zero-shot, a plain linear probe and class means.

fashion-mini on Fashion-MNIST (its own domain; the examples from the train split, scored on the
10,000 test images) for K = 1, 2, 4, 8, 16 examples per class, and on a domain it has never seen
(benchmarks/shapes.py: 12 kinds of drawn shapes; K = 16, scored on the other images). Several seeds
each; top-1 mean and range.

    .venv/bin/python benchmarks/adapt.py [--seeds 5] [--shots 1 2 4 8 16]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table  # noqa: E402


def cell(stats: dict) -> str:
    return f"{100 * stats['mean']:.1f} ({100 * stats['min']:.1f}-{100 * stats['max']:.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--shapes-per-class", type=int, default=66)
    args = ap.parse_args()
    from shapes import make

    from zeroshot.adapt import few_shot_eval
    from zeroshot.assembly import ModelChoice, prepare
    from zeroshot.evaluate import evaluate_run
    from zeroshot.prompts import load_pack, resolve_prompt_set

    print(machine())
    prepared = prepare(ModelChoice("fashion-mini", device="cpu"), load_pack("fashion-mnist"))
    loaded, text = prepared.loaded, prepared.text
    run = evaluate_run(loaded, text, folder=None, idx_dir=None, split="test", limit=None, batch_size=256, workers=0)
    rows = []
    for k in args.shots:
        t = time.perf_counter()
        fs = few_shot_eval(loaded, text, run, k, args.seeds, batch_size=256, workers=0)
        rows.append(["Fashion-MNIST", str(k), cell(fs["zero_shot"]), cell(fs["linear_probe"]),
                     cell(fs["class_means"]), cell(fs["adapted"]),
                     " ".join(f"{p:g}" for p in fs["pull"]), f"{time.perf_counter() - t:.1f}"])  # fmt: skip
        print(f"  K={k}: {rows[-1]}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        classes = make(Path(tmp), args.shapes_per_class)
        shapes = prepare(ModelChoice("fashion-mini", device="cpu"), resolve_prompt_set(labels=classes))
        srun = evaluate_run(shapes.loaded, shapes.text, folder=Path(tmp), idx_dir=None, split="test", limit=None,
                            batch_size=256, workers=0)  # fmt: skip
        fs = few_shot_eval(shapes.loaded, shapes.text, srun, 16, args.seeds, batch_size=256, workers=0)
        rows.append([f"shapes ({len(classes)} classes, never seen)", "16", cell(fs["zero_shot"]),
                     cell(fs["linear_probe"]), cell(fs["class_means"]), cell(fs["adapted"]),
                     " ".join(f"{p:g}" for p in fs["pull"]), "-"])  # fmt: skip
    print(table(rows, ["domain", "K per class", "zero-shot", "linear probe", "class means", "adapted",
                       "pull chosen per seed", "s"]))  # fmt: skip
    print(f"# top-1 %, mean over {args.seeds} seeds (min-max); chance on shapes: {100 / 12:.1f}%")


if __name__ == "__main__":
    main()
