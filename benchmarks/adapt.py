"""Few-shot adaptation (``zeroshot adapt``) against zero-shot, the standard linear probe (ours and
scikit-learn's, on the same draws and folds) and class means.

fashion-mini on Fashion-MNIST (its own domain; the examples from the train split, scored on the
10,000 test images) and on two domains it has never seen (benchmarks/shapes.py: 12 kinds of drawn
shapes; benchmarks/textures.py: 10 kinds of texture; scored on the images not drawn), K = 1, 2, 4,
8, 16 examples per class, several seeds each; top-1 mean, range and worst seed.

scikit-learn's probe: ``LogisticRegressionCV`` (lbfgs, multinomial, ``max_iter=1000``, ``tol=1e-6``:
to convergence, as ours; its default 1e-4 stops short at large C) over the
same sweep of C on the same stratified folds (zeroshot.uses.probe), or ``LogisticRegression`` at
the same default C where one example per class leaves nothing to hold out.

    .venv/bin/python benchmarks/adapt.py [--seeds 5] [--shots 1 2 4 8 16]   # needs the [bench] extra
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


def worst(stats: dict) -> str:
    return f"{100 * stats['min']:.1f}"


def sklearn_probe(x, y, seed: int):
    """scikit-learn's standard probe on the draw ``x``, ``y``: the C of the same sweep chosen on
    the same folds as zeroshot.uses.probe.fit_probe; a predictor of class indices."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    from zeroshot.uses.probe import CS, DEFAULT_C, fold_count, stratified_folds

    k = fold_count(y)
    xs = x.double().numpy()
    if k:
        folds = [(np.flatnonzero(~f.numpy()), np.flatnonzero(f.numpy())) for f in stratified_folds(y, k, seed)]
        model = LogisticRegressionCV(Cs=list(CS), cv=folds, scoring="accuracy", max_iter=1000, tol=1e-6)
        model.fit(xs, y.numpy())
    else:
        model = LogisticRegression(C=DEFAULT_C, max_iter=1000, tol=1e-6)
        model.fit(xs, y.numpy())
    sklearn_probe.chosen.append(float(np.ravel(model.C_)[0]) if k else DEFAULT_C)  # type: ignore[attr-defined]

    def predict(feats):
        import torch.nn.functional as F

        return model.predict(F.normalize(feats.double(), dim=-1).numpy())

    return predict


def choice(fs: dict) -> str:
    """What adapt chose per seed: a pull (p) or the probe's C (C)."""
    chosen = zip(fs["pull"], fs["adapted_probe_c"], strict=True)
    return " ".join(f"p{p:g}" if c is None else f"C{c:g}" for p, c in chosen)


def rows_for(domain: str, loaded, text, run, k: int, seeds: int) -> list[list[str]]:
    from zeroshot.uses.adapt import few_shot_eval

    t = time.perf_counter()
    sklearn_probe.chosen = []  # type: ignore[attr-defined]
    fs = few_shot_eval(loaded, text, run, k, seeds, batch_size=256, workers=0, others={"sklearn": sklearn_probe})
    ours, theirs = fs["probe_c"], sklearn_probe.chosen  # type: ignore[attr-defined]
    diff = max(abs(a - b) for a, b in zip(fs["linear_probe"]["runs"], fs["sklearn"]["runs"], strict=True))
    row = [domain, str(k), cell(fs["zero_shot"]), cell(fs["linear_probe"]), worst(fs["linear_probe"]),
           cell(fs["sklearn"]), f"{100 * diff:.1f}", cell(fs["class_means"]), cell(fs["adapted"]),
           worst(fs["adapted"]), " ".join(f"{c:g}" for c in ours),
           " ".join(f"{c:g}" for c in theirs), choice(fs), f"{time.perf_counter() - t:.1f}"]  # fmt: skip
    print(f"  {row}", file=sys.stderr, flush=True)
    return [row]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--unseen-shots", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--per-class", type=int, default=66, help="images per class drawn for the unseen domains")
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
        rows += rows_for("Fashion-MNIST", loaded, text, run, k, args.seeds)
    for name, maker in (("shapes", shapes.make), ("textures", textures.make)):
        with tempfile.TemporaryDirectory() as tmp:
            classes = maker(Path(tmp), args.per_class)
            unseen = prepare(ModelChoice("fashion-mini", device="cpu", runtime="torch"),
                             resolve_prompt_set(labels=classes))  # fmt: skip
            urun = evaluate_run(unseen.loaded, unseen.text, folder=Path(tmp), idx_dir=None, split="test", limit=None,
                                batch_size=256, workers=0)  # fmt: skip
            for k in args.unseen_shots:
                rows += rows_for(f"{name} (never seen)", unseen.loaded, unseen.text, urun, k, args.seeds)
    print(table(rows, ["domain", "K", "zero-shot", "linear probe", "probe worst", "scikit-learn", "max diff",
                       "class means", "adapted", "adapted worst", "C per seed", "scikit-learn C", "adapt chose",
                       "s"]))  # fmt: skip
    print(f"# top-1 %, mean over {args.seeds} seeds (min-max); chance: shapes {100 / 12:.1f}%, textures 10.0%")


if __name__ == "__main__":
    main()
