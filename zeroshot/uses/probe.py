"""The standard linear probe, as CLIP's paper (Radford et al., 2021, appendix A.3) and CLIP_benchmark's
``--fewshot_k`` run it: multinomial logistic regression with a bias on the L2-normalized image
features, trained to convergence with L-BFGS, its L2 strength chosen on held-out data.

Here the held-out data are the examples themselves: stratified k-fold cross-validation (up to
:data:`MAX_FOLDS` folds, as many as the rarest class has examples) over the log-spaced sweep
:data:`CS` of inverse strengths ``C``. The objective is scikit-learn's ``LogisticRegression``
(``lbfgs``, multinomial): ``C * sum(cross-entropy) + ||W||^2 / 2``, the bias not penalized, so the
tests can hold the two side by side. The choice is scikit-learn's ``LogisticRegressionCV``'s too:
the best mean accuracy over the folds, the smallest ``C`` (the strongest regularization) on a tie.
With one example per class nothing can be held out without leaving its class unseen, and the
probe is fitted at :data:`DEFAULT_C`.

Float64 throughout: the optimum is then the same as scikit-learn's to well under the accuracy
that decides a prediction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# Inverse L2 strengths tried, half a decade apart (1e-2 .. 1e4): the steps a chosen C is compared in.
CS = tuple(10.0 ** (e / 2) for e in range(-4, 9))
# C with one example per class (no fold can hold one out): the sweep's usual choice a step either
# side of it on the domains of benchmarks/adapt.py at K = 2 and 4.
DEFAULT_C = 10.0
MAX_FOLDS = 4
MAX_ITER = 1000  # L-BFGS iterations per fit (CLIP's); the fits here converge in far fewer
# On the largest gradient entry of the mean loss. scikit-learn's default (1e-4) stops short where
# the sweep's C is large and the loss flat: chosen C and top-1 then move with the solver's path.
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Probe:
    """A fitted probe: ``logits = feats @ weights.T + bias`` over ``classes`` (indices into the
    classifier's classes: the classes the examples had), with the ``c`` it was fitted at and the
    cross-validated accuracy of each ``C`` tried (empty when none could be)."""

    weights: Any  # float64 tensor [len(classes), D]
    bias: Any  # float64 tensor [len(classes)]
    classes: Any  # long tensor: the classifier's class index of each row
    c: float
    cv_accuracy: dict[float, float] = field(default_factory=dict)
    folds: int = 0  # how many folds chose c; 0: DEFAULT_C, nothing to hold out

    def predict(self, feats: Any) -> Any:
        """The classifier's class index per row of ``feats`` (normalized here)."""
        import torch
        import torch.nn.functional as F

        x = F.normalize(torch.as_tensor(feats).double(), dim=-1)
        return self.classes[(x @ self.weights.T + self.bias).argmax(dim=1)]


def stratified_folds(labels: Any, k: int, seed: int) -> list[Any]:
    """``k`` boolean masks over the examples, each holding out about 1/k of every class: each
    class's examples are dealt round-robin after a shuffle seeded by ``seed``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(labels), dtype=torch.long)
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        fold[idx] = torch.arange(len(idx)) % k
    return [fold == i for i in range(k)]


def fold_count(labels: Any) -> int:
    """How many folds the examples allow: up to :data:`MAX_FOLDS`, no more than the rarest class
    has examples (every fold's training part then holds every class); 0 when that is under 2."""
    import torch

    if len(labels) == 0:
        return 0
    rarest = int(torch.bincount(labels)[labels.unique()].min())
    return min(MAX_FOLDS, rarest) if rarest >= 2 else 0


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """The fits are many small steps: one thread runs them faster than two that must synchronise
    on every step (on a 2-core machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_logistic(
    x: Any, y: Any, n_classes: int, c: float, init: tuple[Any, Any] | None = None, intercept: bool = True
) -> tuple[Any, Any]:
    """(weights [n_classes, D], bias [n_classes]) minimising ``mean(cross-entropy) + ||W||^2 /
    (2 C N)`` (scikit-learn's objective divided by ``C N``) on float64 features ``x`` [N, D] with
    labels ``y`` in ``range(n_classes)``, every class present. ``init`` warm-starts L-BFGS.

    Without ``intercept`` the bias stays 0: the probe is then ``x @ W.T``, a linear map a cosine
    classifier can hold (:func:`as_cosine`)."""
    import torch
    import torch.nn.functional as F

    n, d = x.shape
    w = (init[0].clone() if init else torch.zeros(n_classes, d, dtype=torch.float64)).requires_grad_(True)
    b = (init[1].clone() if init else torch.zeros(n_classes, dtype=torch.float64)).requires_grad_(intercept)
    # A strong regularization keeps the weights small, so the gradient must be smaller still to
    # settle them: the tolerance shrinks with C below 1.
    tol = TOLERANCE * min(1.0, c)
    opt = torch.optim.LBFGS([w, b] if intercept else [w], lr=1.0, max_iter=MAX_ITER, tolerance_grad=tol,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")  # fmt: skip
    reg = 1.0 / (2.0 * c * n)

    def closure() -> Any:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + reg * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def cross_validate(x: Any, y: Any, n_classes: int, folds: list[Any], cs: tuple[float, ...] = CS) -> dict[float, float]:
    """Mean held-out accuracy over ``folds`` per ``C`` in ``cs`` (labels ``y`` in ``range(n_classes)``;
    scikit-learn's ``accuracy`` averaged over its folds). Each fold walks the sweep from the
    strongest regularization up, warm-starting each fit from the last (the path scikit-learn's
    ``LogisticRegressionCV`` takes)."""
    scores = {c: 0.0 for c in cs}
    for held in folds:
        init = None
        for c in sorted(cs):
            init = fit_logistic(x[~held], y[~held], n_classes, c, init)
            pred = (x[held] @ init[0].T + init[1]).argmax(dim=1)
            scores[c] += float(pred.eq(y[held]).double().mean()) / len(folds)
    return scores


def as_cosine(weights: Any, scale: float) -> tuple[Any, float] | None:
    """(unit rows ``U`` [C, D], ``t``) such that ``softmax(scale * f @ U.T)`` is
    ``softmax(t * f @ weights.T)`` for every ``f``: the form a text classifier scores in.

    Softmax ignores what all classes' logits share, so any ``v`` may be added to every row: the
    one that puts the rows at distance ``scale`` from 0 is found in closed form (points equidistant
    from the rows, then a step off their span; exists while C <= D). ``t`` is 1 (the probe's own
    probabilities) unless the rows are too far apart for ``scale``; they are then brought in by
    ``t < 1`` first (the same ranking, softer scores). None when there are more than D classes
    (no direction is left off their span)."""
    import torch

    p = weights.double()
    if len(p) == 1:
        return p / p.norm(), 1.0
    diffs, sq = p[1:] - p[0], (p * p).sum(dim=1)
    v0 = torch.linalg.pinv(diffs) @ ((sq[0] - sq[1:]) / 2)  # the equidistant point nearest 0, in the rows' span
    null = torch.linalg.svd(diffs, full_matrices=True).Vh[len(diffs) :]  # directions off the span
    if len(null) == 0:
        return None
    n = null[0]
    a = float(p[0] @ n)
    h2 = float(((p[0] + v0) ** 2).sum()) - a * a  # the smallest common squared distance
    t = min(1.0, 0.999 * scale / h2**0.5) if h2 > 0 else 1.0
    step = -t * a + (scale * scale - t * t * h2) ** 0.5
    u = (t * p + t * v0 + step * n) / scale
    return u, t


def best_c(scores: dict[float, float]) -> float:
    """The ``C`` with the best cross-validated accuracy; on a tie, the smallest (scikit-learn's)."""
    top = max(scores.values())
    return min(c for c, s in scores.items() if s >= top)


def fit_probe(feats: Any, labels: Any, seed: int = 0, folds: list[Any] | None = None) -> Probe:
    """The standard probe on ``feats`` [N, D] (normalized here) and class indices ``labels`` [N]:
    ``C`` chosen by cross-validation on ``folds`` (default: :func:`stratified_folds` with
    :func:`fold_count` folds, seeded by ``seed``), then fitted on all the examples at that ``C``."""
    import torch
    import torch.nn.functional as F

    x = F.normalize(torch.as_tensor(feats).double(), dim=-1)
    labels = torch.as_tensor(labels).long()
    present, y = labels.unique(return_inverse=True)
    if folds is None:
        k = fold_count(labels)
        folds = stratified_folds(labels, k, seed) if k else []
    with one_thread():
        scores = cross_validate(x, y, len(present), folds) if folds else {}
        c = best_c(scores) if scores else DEFAULT_C
        w, b = fit_logistic(x, y, len(present), c)
    return Probe(w, b, present, c, scores, len(folds))
