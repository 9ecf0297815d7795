"""How good and how calibrated are --multi-label decisions? Measured on real Fashion-MNIST images.

Each test image is either one garment (28x28, upscaled) or two different garments side by side
(a 56x28 canvas, centred on a 56x56 background), so the true label sets have 1 or 2 members.
The bundled fashion-mini model scores every label on its own (zeroshot.ranking.multilabel_scores);
this prints, for thresholds 0.3-0.7: micro precision / recall / F1 of the per-label decisions,
exact-set accuracy, and the calibration of the score itself (expected calibration error over all
image x label pairs, 10 bins). Baseline in the same run: "top-1 only" (one label per image, the
softmax argmax), which is what a single-label classifier gives.

    .venv/bin/python benchmarks/multilabel.py [--images 600] [--background object]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from zeroshot.classifier import encode_prompt_set, multilabel_rule
from zeroshot.decoding import split_preprocess  # noqa: F401  (same preprocessing path as classify)
from zeroshot.idx import load_split
from zeroshot.models import BUNDLED_NAME, load_model, resolve_spec
from zeroshot.prompts import load_pack
from zeroshot.ranking import multilabel_scores, probabilities


def composites(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    images, labels = load_split(None, "test")
    images, labels = np.asarray(images), np.asarray(labels)
    rng = np.random.default_rng(seed)
    out, truth = [], np.zeros((n, 10), dtype=bool)
    for k in range(n):
        canvas = np.zeros((56, 56), dtype=np.uint8)
        if k % 2 == 0:  # one garment, as big as the pair's
            i = rng.integers(len(images))
            canvas = np.kron(images[i], np.ones((2, 2), dtype=np.uint8))
            truth[k, labels[i]] = True
        else:
            i = rng.integers(len(images))
            j = rng.choice(np.flatnonzero(labels != labels[i]))
            canvas[14:42, :28], canvas[14:42, 28:] = images[i], images[j]
            truth[k, [labels[i], labels[j]]] = True
        out.append(canvas)
    return out, truth


def ece(scores: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    s, t = scores.ravel(), truth.ravel().astype(float)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (s >= lo) & (s < hi if hi < 1 else s <= hi)
        if m.any():
            total += m.mean() * abs(s[m].mean() - t[m].mean())
    return float(total)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--background", default="object")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from PIL import Image

    loaded = load_model(resolve_spec(BUNDLED_NAME))
    pack = load_pack("fashion-mnist")
    weights = encode_prompt_set(loaded, pack)
    rule = multilabel_rule(loaded, pack, 0.5, args.background)
    imgs, truth = composites(args.images, args.seed)
    with torch.inference_mode():
        pixels = torch.stack([loaded.preprocess(Image.fromarray(a).convert("RGB")) for a in imgs])
        feats = torch.cat([loaded.model.encode_image(pixels[i : i + 128]) for i in range(0, len(pixels), 128)])
        scores = multilabel_scores(feats, weights, loaded.logit_scale, rule).numpy()
        top1 = probabilities(feats, weights, loaded.logit_scale).argmax(dim=1).numpy()
    print(f"fashion-mini, {len(imgs)} images ({truth.sum(1).tolist().count(2)} with two garments), "
          f"background {args.background!r}; score calibration ECE = {ece(scores, truth):.3f}")  # fmt: skip
    print(f"{'rule':<18}{'precision':>10}{'recall':>9}{'F1':>7}{'exact set':>11}")

    def row(name: str, pred: np.ndarray) -> None:
        tp = (pred & truth).sum()
        p, r = tp / max(pred.sum(), 1), tp / truth.sum()
        f1 = 2 * p * r / max(p + r, 1e-9)
        print(f"{name:<18}{p:>10.3f}{r:>9.3f}{f1:>7.3f}{(pred == truth).all(1).mean():>11.3f}")

    single = np.zeros_like(truth)
    single[np.arange(len(top1)), top1] = True
    row("top-1 only", single)
    for t in (0.3, 0.4, 0.5, 0.6, 0.7):
        row(f"multi-label >= {t}", scores >= t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
