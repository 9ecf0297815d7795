"""Few-shot adaptation: move the zero-shot class weights as far as a handful of labelled examples
justify, and no further; where the examples justify leaving them, the standard linear probe.

Two families of classifier are tried on the same cross-validation folds of the examples:

- a constrained linear probe in the spirit of CLAP (Silva-Rodríguez et al., "A Closer Look at the
  Few-Shot Adaptation of Large Vision-Language Models", CVPR 2024): a cosine classifier initialised
  at the zero-shot text weights ``W0``, trained with the model's own logit scale, and pulled back
  towards ``W0`` by ``lam * ||W - W0||^2`` per class, for each strength in :data:`LAMBDAS`;
- the standard linear probe (:mod:`zeroshot.uses.probe`: logistic regression, L-BFGS, its L2
  strength ``C`` from a log sweep), cross-validated as it is. The one written is fitted at the
  chosen ``C`` without the bias (a cosine classifier cannot hold a constant; see
  :func:`_unbiased_probe`), which makes it exactly a cosine classifier
  (:func:`zeroshot.uses.probe.as_cosine`): the same file, the same scoring as any text classifier.
  (A bias carried on the features' mean direction instead collapsed to chance where a strong
  regularization was chosen.) It is tried when every class has two examples or more.

The choice leans towards zero-shot: the strongest pull whose held-out accuracy is within one
standard error of the best pull's, unless the probe's beats the best pull's by more than that. Where
zero-shot classifies the examples no better than chance (:func:`zero_shot_knows`), nothing is held
towards it: the probe with the best held-out accuracy is taken (the weakest pull, 0, where the
probe cannot be tried). Classes without examples keep their zero-shot rows exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .probe import as_cosine, best_c, cross_validate, fit_logistic, one_thread, stratified_folds

if TYPE_CHECKING:
    from ..model.models import LoadedModel
    from ..text.classifier import TextClassifier
    from .evaluate import EvalRun

# Pull strengths tried, strongest first: 1e4 keeps the zero-shot weights; 0 is a cosine probe
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
    """Unit-norm class weights [C, D] (a drop-in for a text classifier's) and how they were chosen:
    the pull ``lam`` (0 when the probe was chosen), the probe's ``probe_c`` (None when a pull was),
    and the cross-validated accuracy of each pull and of each probe ``C``."""

    weights: Any
    lam: float
    cv_accuracy: dict[float, float]
    shots: dict[str, int]
    probe_c: float | None = None
    probe_cv: dict[float, float] = field(default_factory=dict)


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


def adapt(feats: Any, labels: Any, w0: Any, scale: float, classes: list[str], seed: int = 0) -> Adapted:
    """Choose between the pulls and the probe by cross-validation on the examples, then fit the
    choice on all of them.

    ``feats`` [N, D] are the examples' image features (normalized here), ``labels`` [N] their class
    indices, ``w0`` [C, D] the zero-shot weights. Folds: up to 4, stratified; with one example per
    class, none can be held out, and zero-shot is kept."""
    with one_thread():
        return _adapt(feats, labels, w0, scale, classes, seed)


def _adapt(feats: Any, labels: Any, w0: Any, scale: float, classes: list[str], seed: int) -> Adapted:
    import torch
    import torch.nn.functional as F

    feats = F.normalize(torch.as_tensor(feats).float(), dim=-1)
    labels = torch.as_tensor(labels).long()
    w0 = torch.as_tensor(w0).float()
    per_class = torch.bincount(labels, minlength=len(classes)) if len(labels) else torch.zeros(len(classes))
    shots = {classes[i]: int(n) for i, n in enumerate(per_class.tolist()) if n}
    rarest = int(per_class[per_class > 0].min()) if len(labels) else 0
    folds = [f for f in stratified_folds(labels, max(2, min(MAX_FOLDS, rarest)), seed) if f.any() and not f.all()]
    scores: dict[float, float] = {}
    for lam in LAMBDAS:
        right = 0.0
        for held in folds:
            w = fit(feats[~held], labels[~held], w0, scale, lam, seed=seed)
            right += share_of(feats[held] @ w.T, labels[held]) / len(folds)
        scores[lam] = right
    probing = int(per_class.min()) >= 2 and len(classes) <= feats.shape[1]  # every class, and as_cosine's bound
    x = feats.double()
    probe_scores = cross_validate(x, labels, len(classes), folds) if probing else {}  # the standard probe's
    if rarest >= 2 and not zero_shot_knows(feats, labels, w0):  # nothing to hold on to
        lam, c = 0.0, (best_c(probe_scores) if probing else None)
    else:
        lam, c = _choose(scores, probe_scores, len(labels))
    if c is None:
        return Adapted(fit(feats, labels, w0, scale, lam, seed=seed), lam, scores, shots, None, probe_scores)
    cosine = as_cosine(_unbiased_probe(x, labels, len(classes), c, folds), scale)
    assert cosine is not None  # probing holds C <= D
    return Adapted(cosine[0].float(), 0.0, scores, shots, c, probe_scores)


def _unbiased_probe(x: Any, labels: Any, n_classes: int, c: float, folds: list[Any]) -> Any:
    """The probe at ``c`` without its bias, as a cosine classifier can hold it: fitted on the
    features, or on the features less their common direction (:func:`off_mean`) where that does
    better on ``folds`` by more than a standard error. Without the bias, ``W @ mean`` differs from
    class to class and tilts every decision, which costs most where a strong regularization keeps
    ``W`` small (up to 7 points in tests/test_probe.py's domains); taking the common direction out
    removes that tilt, and with it whatever the length of that component told (on the unseen
    domains of benchmarks/adapt.py, the plain fit is as good or better)."""
    variants = (x, off_mean(x))
    right = [0.0, 0.0]
    for held in folds:
        for i, v in enumerate(variants):
            w, _ = fit_logistic(v[~held], labels[~held], n_classes, c, intercept=False)
            right[i] += share_of(v[held] @ w.T, labels[held])
    plain = right[0] / len(folds)
    beyond_doubt = right[1] / len(folds) > plain + (plain * (1 - plain) / len(labels)) ** 0.5
    return fit_logistic(variants[1] if beyond_doubt else x, labels, n_classes, c, intercept=False)[0]


def off_mean(x: Any) -> Any:
    """The rows of ``x`` less their component along the rows' mean direction ``m``: a probe fitted
    on them has ``W`` orthogonal to ``m``, so ``W @ f`` equals ``W @ (f - (f @ m) m)`` for every
    ``f``, still a linear map of ``f``."""
    import torch.nn.functional as F

    m = F.normalize(x.mean(dim=0), dim=0)
    return x - (x @ m)[:, None] * m


def share_of(scores: Any, labels: Any) -> float:
    """The share of rows of ``scores`` whose best column is the label."""
    return float(scores.argmax(dim=1).eq(labels).double().mean())


def zero_shot_knows(feats: Any, labels: Any, w0: Any, z: float = SKILL_Z) -> bool:
    """Whether zero-shot classifies the examples better than guessing, beyond doubt: its accuracy
    on them more than ``z`` standard errors over chance (1 / classes). Where it does not (a domain
    the text side knows nothing of), a pull towards it holds the probe back for nothing, and the
    one-standard-error rule, which leans towards the pull, would do exactly that."""
    n, chance = len(labels), 1.0 / len(w0)
    accuracy = float((feats @ w0.T).argmax(dim=1).eq(labels).float().mean())
    return accuracy > chance + z * (chance * (1 - chance) / n) ** 0.5


def _choose(scores: dict[float, float], probe_scores: dict[float, float], n: int) -> tuple[float, float | None]:
    """(pull, probe C or None). The pull: the strongest whose cross-validated accuracy is within
    one standard error of the best pull's (the "one-standard-error rule"): with a few dozen
    examples, a held-out difference smaller than that is noise, and the zero-shot weights deserve
    the benefit of the doubt. The probe (its best C) only where it beats the best pull by more
    than that standard error: its score is the best of a sweep, an optimistic one."""
    if not scores or n == 0:
        return LAMBDAS[0], None
    top = max(scores.values())
    se = (top * (1 - top) / n) ** 0.5
    if probe_scores and max(probe_scores.values()) > top + se:
        return 0.0, best_c(probe_scores)
    return next(lam for lam in LAMBDAS if scores.get(lam, -1.0) >= top - se), None


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
    others: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Zero-shot, the standard linear probe (:func:`zeroshot.uses.probe.fit_probe`), class means
    and the adapted classifier side by side: ``shots`` examples per class drawn from ``pool``
    (indices into ``feats``) per seed, scored on ``test_feats`` when given, else on the examples
    not drawn. Top-1 per seed, with mean and range; per seed, the probe's chosen ``C``
    (``probe_c``; ``probe_folds`` the folds that chose it, 0 for the fixed default where one
    example per class leaves nothing to hold out) and the adapted classifier's choice (``pull``,
    and ``adapted_probe_c``: the probe's C where it was chosen, else None). ``others`` adds
    columns scored on the same draws: name -> ``make(x, y, seed)`` returning a function from test
    features to class indices (benchmarks/adapt.py: scikit-learn's probe)."""
    import torch
    import torch.nn.functional as F

    from .evaluate import share
    from .probe import fit_probe

    feats = F.normalize(torch.as_tensor(feats).float(), dim=-1)
    labels = torch.as_tensor(labels).long()
    w0 = torch.as_tensor(w0).float()
    runs: dict[str, list[float]] = {"zero_shot": [], "linear_probe": [], "class_means": [], "adapted": []}
    runs.update({name: [] for name in others or {}})
    chosen: list[float] = []
    chosen_c: list[float | None] = []
    probe_c: list[float] = []
    probe_folds = 0
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
        for name, w in (("zero_shot", w0), ("class_means", means), ("adapted", a.weights)):
            runs[name].append(share((tf @ w.T).argmax(dim=1).eq(tl)))
        probe = fit_probe(x, y, seed=seed)
        runs["linear_probe"].append(share(probe.predict(tf).eq(tl)))
        chosen.append(a.lam)
        chosen_c.append(a.probe_c)
        probe_c.append(probe.c)
        probe_folds = probe.folds
        for name, make in (others or {}).items():
            runs[name].append(share(torch.as_tensor(make(x, y, seed)(tf)).eq(tl)))
    out: dict[str, Any] = {"shots": shots, "seeds": seeds, "pull": chosen, "adapted_probe_c": chosen_c,
                           "probe_c": probe_c, "probe_folds": probe_folds}  # fmt: skip
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
    others: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``eval --shots``: draw the examples from ``train`` (a folder of class sub-folders), from the
    IDX dataset's train split when the run read IDX files, else from the evaluated folder itself
    (scoring on the images not drawn); see :func:`few_shot`."""
    import torch

    from .evaluate import Labelled, folder_items, image_features

    classes = list(text.classes)
    if train is None and run.array is None:  # the evaluated folder: draw there, score on the rest
        pool = list(range(len(run.labels)))
        return few_shot(run.feats, run.labels, pool, text.tensor("cpu"), loaded.logit_scale, classes, shots, seeds,
                        others=others)  # fmt: skip
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
                    test_feats=run.feats, test_labels=run.labels, others=others)  # fmt: skip
