"""Image features -> probabilities -> records.

Probabilities are the softmax over all classes of ``logit_scale.exp()`` times the cosine
similarity between the normalized image embedding and each class embedding.

Multi-label scores (:class:`MultiLabel`) decide each label on its own instead:
``sigmoid(a * cos + b)``, with ``a`` and ``b`` from, in order of preference:

1. a calibration fitted on labelled images (:mod:`zeroshot.uses.calibration`): a probability;
2. the model's own learned ``logit_bias`` (sigmoid-trained models such as SigLIP), with its
   logit scale: the probability the model was trained to give;
3. otherwise (CLIP models, uncalibrated) a *background* class: the templates filled with a
   neutral word, "object" by default, and ``sigmoid(scale * (cos(image, label) - cos(image,
   background)))``, the two-way softmax between the label and the background. Above 0.5 means
   "closer to the label than to a generic object"; it is not a calibrated probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict


class Ranked(TypedDict):
    """One entry of a record's ``top_k``."""

    label: str
    score: float


class Record(TypedDict, total=False):
    """One output record: ``path`` always; then ``label``, ``score`` and ``top_k`` (plus ``labels``
    with --multi-label), or ``error`` for an input that could not be classified."""

    path: str
    time: float  # a video frame's: seconds from the stream's start
    frame: int  # a video frame's index in presentation order
    label: str | None
    score: float
    labels: list[str]
    top_k: list[Ranked]
    error: str


DEFAULT_BACKGROUND = "object"


@dataclass
class MultiLabel:
    """How per-label decisions are made (see the module docstring): ``kind`` is "calibrated",
    "model" or "background"; ``scale`` None means the model's logit scale."""

    threshold: float = 0.5
    kind: str = "background"
    scale: float | None = None
    bias: float = 0.0
    background: Any = None  # unit [dim] vector (tensor or array), for kind "background"


def as_float64(x: Any) -> Any:
    """A numpy float64 array of ``x``: a torch tensor (any device or dtype), an array or a list."""
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _cosines(image_features: Any, class_weights: Any) -> tuple[Any, Any]:
    """(unit image features [N, D], cosine similarities [N, C]), in float64."""
    import numpy as np

    feats = as_float64(image_features)
    feats = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)  # F.normalize's eps
    return feats, feats @ as_float64(class_weights).T


def multilabel_scores(image_features: Any, class_weights: Any, logit_scale: float, rule: MultiLabel) -> Any:
    """[N, C] independent per-label scores in (0, 1) (see the module docstring), numpy float64."""
    import numpy as np

    feats, cos = _cosines(image_features, class_weights)
    scale = logit_scale if rule.scale is None else rule.scale
    if rule.background is not None:
        z = scale * (cos - (feats @ as_float64(rule.background))[:, None])
    else:
        z = scale * cos + rule.bias
    return np.exp(-np.logaddexp(0.0, -z))  # the logistic sigmoid, without overflow for any z


def multilabel_records(
    paths: Sequence[str], scores: Any, classes: Sequence[str], top_k: int, threshold: float
) -> list[Record]:
    """Records whose ``labels`` are every class scoring at least ``threshold`` (best first);
    ``label`` is the best of them or None, ``score`` the best score, ``top_k`` the best ``top_k``."""
    import numpy as np

    scores = as_float64(scores)
    order = np.argsort(-scores, axis=-1, kind="stable")
    k = max(1, min(top_k, len(classes)))
    out: list[Record] = []
    for path, row, idxs in zip(paths, scores, order.tolist(), strict=True):
        vals = row[idxs].tolist()
        chosen = [classes[i] for v, i in zip(vals, idxs, strict=True) if v >= threshold]
        top = [Ranked(label=classes[i], score=v) for v, i in zip(vals[:k], idxs[:k], strict=True)]
        out.append(Record(path=path, label=chosen[0] if chosen else None, score=vals[0], labels=chosen, top_k=top))
    return out


def probabilities(image_features: Any, class_weights: Any, logit_scale: float) -> Any:
    """[N, C] softmax probabilities (numpy float64) from raw image features [N, D] and unit class
    rows [C, D]. Computed in float64 with numpy, so a run that finds every image embedding in the
    cache scores them without torch, and its records equal the model's to the last digit."""
    import numpy as np

    _, cos = _cosines(image_features, class_weights)
    logits = logit_scale * cos
    logits -= logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=-1, keepdims=True)


def records(paths: Sequence[str], probs: Any, classes: Sequence[str], top_k: int) -> list[Record]:
    """One record per row: the best label, its score and the ``top_k`` best labels with scores
    (ties: the earlier class first)."""
    import numpy as np

    probs = as_float64(probs)
    k = max(1, min(top_k, len(classes)))
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    out: list[Record] = []
    for path, row, idxs in zip(paths, probs, order.tolist(), strict=True):
        top = [Ranked(label=classes[i], score=v) for v, i in zip(row[idxs].tolist(), idxs, strict=True)]
        out.append(Record(path=path, label=top[0]["label"], score=top[0]["score"], top_k=top))
    return out


def feature_records(
    paths: Sequence[str],
    image_features: Any,
    class_weights: Any,
    logit_scale: float,
    classes: Sequence[str],
    top_k: int,
    multi_label: MultiLabel | None = None,
) -> list[Record]:
    """Raw image features [N, D] -> one record per path: softmax ranking, or per-label decisions
    with ``multi_label``. The one step both engines (local and Ray) share."""
    rows = scores(image_features, class_weights, logit_scale, multi_label)
    return scored_records(paths, rows, classes, top_k, multi_label)


def scores(image_features: Any, class_weights: Any, logit_scale: float, multi_label: MultiLabel | None) -> Any:
    """[N, C] numpy float64: softmax probabilities, or with ``multi_label`` per-label scores."""
    if multi_label is None:
        return probabilities(image_features, class_weights, logit_scale)
    return multilabel_scores(image_features, class_weights, logit_scale, multi_label)


def scored_records(
    paths: Sequence[str], rows: Any, classes: Sequence[str], top_k: int, multi_label: MultiLabel | None
) -> list[Record]:
    """One record per row of :func:`scores` (``--per-video`` gives it a video's mean row)."""
    if multi_label is None:
        return records(paths, rows, classes, top_k)
    return multilabel_records(paths, rows, classes, top_k, multi_label.threshold)


def error_record(path: str, message: str) -> Record:
    return Record(path=path, error=message)
