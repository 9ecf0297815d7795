"""Image features -> probabilities -> records.

Probabilities are the softmax over all classes of ``logit_scale.exp()`` times the cosine
similarity between the normalized image embedding and each class embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def probabilities(image_features: Any, class_weights: Any, logit_scale: float) -> Any:
    """[N, C] softmax probabilities from raw image features [N, D] and unit class rows [C, D]."""
    import torch.nn.functional as F

    feats = F.normalize(image_features.float(), dim=-1)
    logits = logit_scale * feats @ class_weights.T
    return logits.softmax(dim=-1)


def records(paths: Sequence[str], probs: Any, classes: Sequence[str], top_k: int) -> list[dict[str, Any]]:
    """One record per row: the best label, its score and the ``top_k`` best labels with scores."""
    import torch

    k = max(1, min(top_k, len(classes)))
    values, indices = torch.topk(probs.double().cpu(), k, dim=-1)
    out = []
    for path, vals, idxs in zip(paths, values.tolist(), indices.tolist(), strict=True):
        top = [{"label": classes[i], "score": v} for v, i in zip(vals, idxs, strict=True)]
        out.append({"path": path, "label": top[0]["label"], "score": top[0]["score"], "top_k": top})
    return out


def error_record(path: str, message: str) -> dict[str, Any]:
    return {"path": path, "error": message}
