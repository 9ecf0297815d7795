"""Few-shot adaptation: move the zero-shot class weights as far as a handful of labelled examples
justify, and no further.

The method is a constrained linear probe in the spirit of CLAP (Silva-Rodríguez et al., "A Closer
Look at the Few-Shot Adaptation of Large Vision-Language Models", CVPR 2024): a cosine classifier
initialised at the zero-shot text weights ``W0``, trained with the model's own logit scale, and
pulled back towards ``W0`` by ``lam * ||W - W0||^2`` per class. CLAP sets the pull per class from
the zero-shot fit; here one strength is chosen by cross-validation on the examples themselves, from
a grid that runs from "stay at zero-shot" to "a plain linear probe". In the model's own domain the
held-out examples favour a strong pull (zero-shot is hard to beat); in a domain the text side does
not know they favour a weak one. Where zero-shot classifies the examples no better than chance
(:func:`zero_shot_knows`), no pull is chosen at all: the result is the plain probe, which the
one-standard-error rule, leaning towards the pull, would otherwise hold back on a bad draw.
Classes without examples keep their zero-shot rows exactly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model.models import LoadedModel
    from ..text.classifier import TextClassifier
    from .evaluate import EvalRun

# Pull strengths tried, strongest first: 1e4 keeps the zero-shot weights; 0 is a plain linear probe
# started from them.
LAMBDAS = (1e4, 1e2, 10.0, 1.0, 0.1, 0.01, 0.0)
STEPS = 100  # full-batch Adam steps per fit; the problem is small (K x classes examples)
MAX_FOLDS = 4
LR = 0.01
# Standard errors over chance that zero-shot's accuracy on the examples must reach for the pull to
# be worth choosing (one-sided p < 0.002): a margin, not a hair's breadth, since with a few dozen
# examples a zero-shot barely over chance holds the probe back (benchmarks/adapt.py, textures K=8).
SKILL_Z = 3.0


@dataclass(frozen=True)
class Adapted:
    """Unit-norm class weights [C, D] (a drop-in for a text classifier's) and how they were chosen."""

    weights: Any
    lam: float
    cv_accuracy: dict[float, float]
    shots: dict[str, int]


def fit(feats: Any, labels: Any, w0: Any, scale: float, lam: float, steps: int = STEPS, seed: int = 0) -> Any:
    """Train the cosine classifier from ``w0`` on normalized ``feats`` [N, D] with ``labels`` [N];
    rows of classes absent from ``labels`` are not trained (they stay ``w0``'s exactly)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    w0 = w0.float()
    present = torch.zeros(len(w0), dtype=torch.bool)
    present[labels.unique()] = True
    if len(labels) == 0:
        return w0.clone()
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=LR)
    for _ in range(steps):
        opt.zero_grad()
        unit = F.normalize(w, dim=-1)
        loss = F.cross_entropy(scale * feats @ unit.T, labels)
        loss = loss + lam * ((unit - w0)[present] ** 2).sum(dim=-1).mean()
        loss.backward()
        w.grad[~present] = 0
        opt.step()
    with torch.no_grad():
        out = F.normalize(w.detach(), dim=-1)
        out[~present] = w0[~present]
    return out


def _folds(labels: Any, k: int, seed: int) -> list[Any]:
    """Fold index per example, stratified: each class's examples dealt round-robin after a shuffle."""
    import torch

    g = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        fold[idx] = torch.arange(len(idx)) % k
    return [fold == i for i in range(k)]


def adapt(feats: Any, labels: Any, w0: Any, scale: float, classes: list[str], seed: int = 0) -> Adapted:
    """Choose the pull strength by cross-validation on the examples, then fit on all of them.

    ``feats`` [N, D] are the examples' image features (normalized here), ``labels`` [N] their class
    indices, ``w0`` [C, D] the zero-shot weights. Folds: up to 4, stratified; with one example per
    class, leave-one-out (each held-out example's class then has none in training and is judged by
    its zero-shot row, which is what the strong pulls keep)."""

    with _one_thread():
        return _adapt(feats, labels, w0, scale, classes, seed)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The fits are hundreds of tiny steps: one thread runs them many times faster than two that
    must synchronise on every step (on this 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _adapt(feats: Any, labels: Any, w0: Any, scale: float, classes: list[str], seed: int) -> Adapted:
    import torch
    import torch.nn.functional as F

    feats = F.normalize(torch.as_tensor(feats).float(), dim=-1)
    labels = torch.as_tensor(labels).long()
    w0 = torch.as_tensor(w0).float()
    per_class = torch.bincount(labels, minlength=len(classes)) if len(labels) else torch.zeros(len(classes))
    shots = {classes[i]: int(n) for i, n in enumerate(per_class.tolist()) if n}
    k = max(2, min(MAX_FOLDS, int(per_class[per_class > 0].min()) if len(labels) else 2))
    folds = _folds(labels, k, seed) if len(labels) else []
    scores: dict[float, float] = {}
    for lam in LAMBDAS:
        right = 0
        for held in folds:
            if held.all() or not held.any():
                continue
            w = fit(feats[~held], labels[~held], w0, scale, lam, seed=seed)
            right += int((feats[held] @ w.T).argmax(dim=1).eq(labels[held]).sum())
        scores[lam] = right / max(1, len(labels))
    best = _choose(scores, len(labels))
    if len(labels) and int(per_class[per_class > 0].min()) >= 2 and not zero_shot_knows(feats, labels, w0):
        best = 0.0  # nothing to hold on to: the plain probe (the cross-validation is kept for the record)
    return Adapted(fit(feats, labels, w0, scale, best, seed=seed), best, scores, shots)


def zero_shot_knows(feats: Any, labels: Any, w0: Any, z: float = SKILL_Z) -> bool:
    """Whether zero-shot classifies the examples better than guessing, beyond doubt: its accuracy
    on them more than ``z`` standard errors over chance (1 / classes). Where it does not (a domain
    the text side knows nothing of), a pull towards it holds the probe back for nothing, and the
    one-standard-error rule, which leans towards the pull, would do exactly that."""
    n, chance = len(labels), 1.0 / len(w0)
    accuracy = float((feats @ w0.T).argmax(dim=1).eq(labels).float().mean())
    return accuracy > chance + z * (chance * (1 - chance) / n) ** 0.5


def _choose(scores: dict[float, float], n: int) -> float:
    """The strongest pull whose cross-validated accuracy is within one standard error of the best
    (the "one-standard-error rule"): with a few dozen examples, a held-out difference smaller than
    that is noise, and the zero-shot weights deserve the benefit of the doubt."""
    if not scores or n == 0:
        return LAMBDAS[0]
    top = max(scores.values())
    se = (top * (1 - top) / n) ** 0.5
    return next(lam for lam in LAMBDAS if scores.get(lam, -1.0) >= top - se)


@dataclass
class AdaptRun:
    """:func:`adapt_folder`'s result: the adapted classifier, the examples used, what failed."""

    adapted: Adapted
    text: TextClassifier  # the adapted weights with the prompt set's classes: classify-ready
    examples: list[tuple[str, str]]  # (class, sha256 of the file) per example used
    failed: list[dict[str, str]]


def adapt_folder(
    loaded: LoadedModel,
    text: TextClassifier,
    folder: str | Path,
    *,
    seed: int = 0,
    batch_size: int = 64,
    workers: int | None = None,
    max_bytes: int | None = None,
    image_cache: Any = None,
    tower: Any = None,
) -> AdaptRun:
    """Adapt ``text`` (the zero-shot classifier) to the labelled examples in ``folder`` (one
    sub-folder per class, matched to the classes as ``eval`` matches them). Examples go through
    ``classify``'s image core (and ``image_cache``); a file that cannot be read is listed in
    ``failed`` and left out."""
    from ..image.reading import file_digest
    from ..text.classifier import TextClassifier
    from .evaluate import folder_items, image_features

    items = list(folder_items(Path(folder), text.classes))
    keys: list[str | int] = []
    feats, labels, failed = image_features(tower or loaded, items, batch_size=batch_size, workers=workers,
                                           keys_out=keys, max_bytes=max_bytes, image_cache=image_cache)  # fmt: skip
    adapted = adapt(feats, labels, text.tensor("cpu"), loaded.logit_scale, list(text.classes), seed=seed)
    examples = [(text.classes[int(y)], file_digest(str(k), max_bytes)) for k, y in zip(keys, labels, strict=True)]
    weights = adapted.weights.numpy()
    return AdaptRun(adapted, TextClassifier(text.prompt_set, weights, None, False, 0.0), examples, failed)


def few_shot(
    feats: Any,
    labels: Any,
    pool: Any,
    w0: Any,
    scale: float,
    classes: list[str],
    shots: int,
    seeds: int,
    test_feats: Any = None,
    test_labels: Any = None,
) -> dict[str, Any]:
    """Zero-shot, a plain linear probe, class means and the adapted classifier side by side:
    ``shots`` examples per class drawn from ``pool`` (indices into ``feats``) per seed, scored on
    ``test_feats`` when given, else on the examples not drawn. Top-1 per seed, with mean and range."""
    import torch
    import torch.nn.functional as F

    from .evaluate import share

    feats = F.normalize(torch.as_tensor(feats).float(), dim=-1)
    labels = torch.as_tensor(labels).long()
    w0 = torch.as_tensor(w0).float()
    runs: dict[str, list[float]] = {"zero_shot": [], "linear_probe": [], "class_means": [], "adapted": []}
    chosen: list[float] = []
    pool_labels = labels[torch.as_tensor(list(pool), dtype=torch.long)].tolist()
    by_class: list[list[int]] = [[] for _ in classes]  # the pool's indices per class, once for all seeds
    for i, y in zip(pool, pool_labels, strict=True):
        by_class[y].append(int(i))
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        draw = []
        for idx in by_class:
            order = torch.randperm(len(idx), generator=g)[:shots].tolist()
            draw += [idx[j] for j in order]
        drawn = torch.tensor(draw, dtype=torch.long)
        if test_feats is not None:
            tf, tl = F.normalize(torch.as_tensor(test_feats).float(), dim=-1), torch.as_tensor(test_labels).long()
        else:
            rest = torch.ones(len(labels), dtype=torch.bool)
            rest[drawn] = False
            tf, tl = feats[rest], labels[rest]
        x, y = feats[drawn], labels[drawn]
        means = w0.clone()
        for c in y.unique():
            means[c] = F.normalize(x[y == c].mean(dim=0), dim=0)
        a = adapt(x, y, w0, scale, classes, seed=seed)
        for name, w in (("zero_shot", w0), ("linear_probe", fit(x, y, w0, scale, 0.0, seed=seed)),
                        ("class_means", means), ("adapted", a.weights)):  # fmt: skip
            runs[name].append(share((tf @ w.T).argmax(dim=1).eq(tl)))
        chosen.append(a.lam)
    out: dict[str, Any] = {"shots": shots, "seeds": seeds, "pull": chosen}
    for name, vals in runs.items():
        out[name] = {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals), "runs": vals}
    return out


# Train images per class whose features ``eval --shots`` computes for an IDX dataset (the draws
# per seed come from these): enough for any K up to 64, without encoding all 60,000.
IDX_POOL_PER_CLASS = 200


def few_shot_eval(
    loaded: LoadedModel,
    text: TextClassifier,
    run: EvalRun,
    shots: int,
    seeds: int,
    *,
    train: str | Path | None = None,
    idx_dir: str | Path | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    max_bytes: int | None = None,
    tower: Any = None,
) -> dict[str, Any]:
    """``eval --shots``: draw the examples from ``train`` (a folder of class sub-folders), from the
    IDX dataset's train split when the run read IDX files, else from the evaluated folder itself
    (scoring on the images not drawn); see :func:`few_shot`."""
    import torch

    from .evaluate import Labelled, folder_items, image_features

    classes = list(text.classes)
    if train is None and run.array is None:  # the evaluated folder: draw there, score on the rest
        pool = list(range(len(run.labels)))
        return few_shot(run.feats, run.labels, pool, text.tensor("cpu"), loaded.logit_scale, classes, shots, seeds)
    if train is not None:
        items: list[Labelled] = list(folder_items(Path(train), text.classes))
        feats, labels, _ = image_features(tower or loaded, items, batch_size=batch_size, workers=workers,
                                          max_bytes=max_bytes)  # fmt: skip
    else:
        from ..image.idx import load_split

        array, raw = load_split(idx_dir, "train")
        ys = torch.as_tensor(raw.astype("int64"))
        g = torch.Generator().manual_seed(0)
        picked = [int(i) for c in range(len(classes))
                  for i in (ys == c).nonzero().flatten()[torch.randperm(int((ys == c).sum()), generator=g)]
                  [:IDX_POOL_PER_CLASS]]  # fmt: skip
        items = [Labelled(i, int(ys[i])) for i in picked]
        feats, labels, _ = image_features(tower or loaded, items, array, batch_size=batch_size, workers=workers)
    pool = list(range(len(labels)))
    return few_shot(feats, labels, pool, text.tensor("cpu"), loaded.logit_scale, classes, shots, seeds,
                    test_feats=run.feats, test_labels=run.labels)  # fmt: skip
