"""How good and how calibrated are --multi-label decisions? Measured on real Fashion-MNIST images.

Each test image is either one garment (28x28 scaled to 56x56) or two different garments side by
side (centred on a 56x56 canvas), so the true label sets have 1 or 2 members. The bundled
fashion-mini model scores every label on its own; two rules are compared in the same run:

- uncalibrated: the background rule (label vs. "object", or --background WORD);
- calibrated: Platt scaling fitted, as ``eval --calibrate`` does, on single-garment images of the
  *train* split (--fit-images), then applied to the test-split composites.

For each rule: the calibration of the score (expected calibration error over all image x label
pairs, 10 bins) and, for thresholds 0.3-0.7, micro precision / recall / F1 of the per-label
decisions and exact-set accuracy. Baseline: "top-1 only" (the softmax argmax, one label per image).

    .venv/bin/python benchmarks/multilabel.py [--images 600] [--fit-images 3000] [--background object]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from zeroshot.image.idx import load_split
from zeroshot.model.models import BUNDLED_NAME, load_model, resolve_spec
from zeroshot.text.classifier import encode_prompt_set
from zeroshot.text.prompts import load_pack
from zeroshot.uses.calibration import expected_calibration_error, fit_platt, multilabel_rule
from zeroshot.uses.ranking import MultiLabel, multilabel_scores, probabilities


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--fit-images", type=int, default=3000)
    ap.add_argument("--background", default="object")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from PIL import Image

    loaded = load_model(resolve_spec(BUNDLED_NAME))
    pack = load_pack("fashion-mnist")
    weights = encode_prompt_set(loaded, pack)

    def features(arrays: list[np.ndarray]) -> torch.Tensor:
        with torch.inference_mode():
            px = torch.stack([loaded.preprocess(Image.fromarray(a).convert("RGB")) for a in arrays])
            return torch.cat([loaded.model.encode_image(px[i : i + 256]) for i in range(0, len(px), 256)]).float()

    train_x, train_y = load_split(None, "train")
    fit_feats = features(list(np.asarray(train_x)[: args.fit_images]))
    fit_cos = torch.nn.functional.normalize(fit_feats, dim=-1) @ weights.T
    a, b = fit_platt(fit_cos, torch.tensor(np.array(train_y[: args.fit_images])), loaded.logit_scale)
    rules = {
        f"uncalibrated ({args.background!r})": multilabel_rule(loaded, pack, 0.5, args.background),
        f"calibrated (a={a:.1f}, b={b:.1f})": MultiLabel(kind="calibrated", scale=a, bias=b),
    }
    imgs, truth = composites(args.images, args.seed)
    feats = features(imgs)
    top1 = probabilities(feats, weights, loaded.logit_scale).argmax(dim=1).numpy()
    print(f"fashion-mini, {len(imgs)} test-split images ({int((truth.sum(1) == 2).sum())} with two garments); "
          f"calibration fitted on {len(fit_cos)} train-split images")  # fmt: skip
    print(f"{'rule':<34}{'ECE':>7}{'threshold':>10}{'precision':>10}{'recall':>8}{'F1':>7}{'exact set':>11}")

    def row(name: str, ece: str, t: str, pred: np.ndarray) -> None:
        tp = (pred & truth).sum()
        p, r = tp / max(pred.sum(), 1), tp / truth.sum()
        f1 = 2 * p * r / max(p + r, 1e-9)
        print(f"{name:<34}{ece:>7}{t:>10}{p:>10.3f}{r:>8.3f}{f1:>7.3f}{(pred == truth).all(1).mean():>11.3f}")

    single = np.zeros_like(truth)
    single[np.arange(len(top1)), top1] = True
    row("top-1 only (softmax argmax)", "", "", single)
    for name, rule in rules.items():
        scores = multilabel_scores(feats, weights, loaded.logit_scale, rule)
        ece = f"{expected_calibration_error(scores, torch.as_tensor(truth)):.3f}"
        for t in (0.3, 0.4, 0.5, 0.6, 0.7):
            row(name if t == 0.3 else "", ece if t == 0.3 else "", f"{t}", scores.numpy() >= t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
