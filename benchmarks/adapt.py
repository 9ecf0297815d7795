"""Few-shot adaptation (``zeroshot adapt``) against zero-shot, a plain linear probe and class means.

fashion-mini on Fashion-MNIST (its own domain; the examples from the train split, scored on the
10,000 test images) for K = 1, 2, 4, 8, 16 examples per class, and on two domains it has never seen
(benchmarks/shapes.py: 12 kinds of drawn shapes; benchmarks/textures.py: 10 kinds of texture; K = 8
and 16, scored on the other images). Several seeds each; top-1 mean, range and worst seed.
``--compare`` adds the rule before the skill test (zeroshot.uses.adapt.zero_shot_knows) on the same draws.

    .venv/bin/python benchmarks/adapt.py [--seeds 5] [--shots 1 2 4 8 16] [--compare]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table  # noqa: E402


def cell(stats: dict) -> str:
    return f"{100 * stats['mean']:.1f} ({100 * stats['min']:.1f}-{100 * stats['max']:.1f})"


def worst(stats: dict) -> str:
    return f"{100 * stats['min']:.1f}"


def old_rule() -> contextlib.AbstractContextManager:
    """The rule before the skill test (the one-standard-error choice whatever zero-shot does on the
    examples), for the comparison rows."""
    from zeroshot.uses import adapt

    return mock.patch.object(adapt, "zero_shot_knows", lambda feats, labels, w0: True)


def rows_for(domain: str, loaded, text, run, k: int, seeds: int, compare: bool) -> list[list[str]]:
    from zeroshot.uses.adapt import few_shot_eval

    out = []
    for rule in ("skill test", "before") if compare else ("skill test",):
        t = time.perf_counter()
        with old_rule() if rule == "before" else contextlib.nullcontext():
            fs = few_shot_eval(loaded, text, run, k, seeds, batch_size=256, workers=0)
        out.append([domain, str(k), rule, cell(fs["zero_shot"]), cell(fs["linear_probe"]), worst(fs["linear_probe"]),
                    cell(fs["class_means"]), cell(fs["adapted"]), worst(fs["adapted"]),
                    " ".join(f"{p:g}" for p in fs["pull"]), f"{time.perf_counter() - t:.1f}"])  # fmt: skip
        print(f"  {out[-1]}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--unseen-shots", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--per-class", type=int, default=66, help="images per class drawn for the unseen domains")
    ap.add_argument("--compare", action="store_true", help="also the rule before the skill test, same draws")
    args = ap.parse_args()
    import shapes
    import textures

    from zeroshot.assembly import ModelChoice, prepare
    from zeroshot.text.prompts import load_pack, resolve_prompt_set
    from zeroshot.uses.evaluate import evaluate_run

    print(machine())
    prepared = prepare(ModelChoice("fashion-mini", device="cpu", runtime="torch"), load_pack("fashion-mnist"))
    loaded, text = prepared.loaded, prepared.text
    run = evaluate_run(loaded, text, folder=None, idx_dir=None, split="test", limit=None, batch_size=256, workers=0)
    rows = []
    for k in args.shots:
        rows += rows_for("Fashion-MNIST", loaded, text, run, k, args.seeds, args.compare)
    for name, maker in (("shapes", shapes.make), ("textures", textures.make)):
        with tempfile.TemporaryDirectory() as tmp:
            classes = maker(Path(tmp), args.per_class)
            unseen = prepare(ModelChoice("fashion-mini", device="cpu", runtime="torch"),
                             resolve_prompt_set(labels=classes))  # fmt: skip
            urun = evaluate_run(unseen.loaded, unseen.text, folder=Path(tmp), idx_dir=None, split="test", limit=None,
                                batch_size=256, workers=0)  # fmt: skip
            for k in args.unseen_shots:
                rows += rows_for(f"{name} ({len(classes)} classes, never seen)", unseen.loaded, unseen.text, urun, k,
                                 args.seeds, args.compare)  # fmt: skip
    print(table(rows, ["domain", "K per class", "rule", "zero-shot", "linear probe", "probe worst", "class means",
                       "adapted", "adapted worst", "pull chosen per seed", "s"]))  # fmt: skip
    print(f"# top-1 %, mean over {args.seeds} seeds (min-max); chance: shapes {100 / 12:.1f}%, textures 10.0%")


if __name__ == "__main__":
    main()
