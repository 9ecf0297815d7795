"""Image features -> probabilities -> records.

Probabilities are the softmax over all classes of ``logit_scale.exp()`` times the cosine
similarity between the normalized image embedding and each class embedding.

Multi-label scores (:class:`MultiLabel`) decide each label on its own instead:
``sigmoid(a * cos + b)``, with ``a`` and ``b`` from, in order of preference:

1. a calibration fitted on labelled images (:mod:`zeroshot.calibration`): a probability;
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
    background: Any = None  # unit [dim] tensor, for kind "background"


def multilabel_scores(image_features: Any, class_weights: Any, logit_scale: float, rule: MultiLabel) -> Any:
    """[N, C] independent per-label scores in (0, 1) (see the module docstring)."""
    import torch.nn.functional as F

    feats = F.normalize(image_features.float(), dim=-1)
    cos = feats @ class_weights.T
    scale = logit_scale if rule.scale is None else rule.scale
    if rule.background is not None:
        ref = feats @ rule.background.to(feats.device, feats.dtype)
        return (scale * (cos - ref[:, None])).sigmoid()
    return (scale * cos + rule.bias).sigmoid()


def multilabel_records(
    paths: Sequence[str], scores: Any, classes: Sequence[str], top_k: int, threshold: float
) -> list[Record]:
    """Records whose ``labels`` are every class scoring at least ``threshold`` (best first);
    ``label`` is the best of them or None, ``score`` the best score, ``top_k`` the best ``top_k``."""
    import torch

    values, indices = torch.sort(scores.double().cpu(), dim=-1, descending=True)
    k = max(1, min(top_k, len(classes)))
    out: list[Record] = []
    for path, vals, idxs in zip(paths, values.tolist(), indices.tolist(), strict=True):
        chosen = [classes[i] for v, i in zip(vals, idxs, strict=True) if v >= threshold]
        top = [Ranked(label=classes[i], score=v) for v, i in zip(vals[:k], idxs[:k], strict=True)]
        out.append(Record(path=path, label=chosen[0] if chosen else None, score=vals[0], labels=chosen, top_k=top))
    return out


def probabilities(image_features: Any, class_weights: Any, logit_scale: float) -> Any:
    """[N, C] softmax probabilities from raw image features [N, D] and unit class rows [C, D]."""
    import torch.nn.functional as F

    feats = F.normalize(image_features.float(), dim=-1)
    logits = logit_scale * feats @ class_weights.T
    return logits.softmax(dim=-1)


def records(paths: Sequence[str], probs: Any, classes: Sequence[str], top_k: int) -> list[Record]:
    """One record per row: the best label, its score and the ``top_k`` best labels with scores."""
    import torch

    k = max(1, min(top_k, len(classes)))
    values, indices = torch.topk(probs.double().cpu(), k, dim=-1)
    out: list[Record] = []
    for path, vals, idxs in zip(paths, values.tolist(), indices.tolist(), strict=True):
        top = [Ranked(label=classes[i], score=v) for v, i in zip(vals, idxs, strict=True)]
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
    if multi_label is None:
        return records(paths, probabilities(image_features, class_weights, logit_scale), classes, top_k)
    scores = multilabel_scores(image_features, class_weights, logit_scale, multi_label)
    return multilabel_records(paths, scores, classes, top_k, multi_label.threshold)


def error_record(path: str, message: str) -> Record:
    return Record(path=path, error=message)
