"""The text side: prompt ensembles -> one unit vector per class, cached on disk.

The math is the CLIP paper's prompt ensembling, as open_clip's ``build_zero_shot_classifier``
does it: encode every prompt, L2-normalize each embedding, average a class's prompts, and
L2-normalize the average again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import cache
from .models import LoadedModel, ModelSpec, weights_identity
from .prompts import PromptSet

log = logging.getLogger("zeroshot")


@dataclass
class TextClassifier:
    """Class embeddings for one prompt set and one model: ``weights`` is [num_classes, dim]."""

    prompt_set: PromptSet
    weights: Any  # float32 [num_classes, dim]: a torch.Tensor on ``device``, or numpy when none was asked
    cache_path: Path | None
    cache_hit: bool
    seconds: float

    @property
    def classes(self) -> tuple[str, ...]:
        return self.prompt_set.classes


def encode_prompt_set(loaded: LoadedModel, prompt_set: PromptSet, batch_size: int = 256) -> Any:
    """[num_classes, dim] float32 class embeddings on the model's device."""
    import torch
    import torch.nn.functional as F

    texts = prompt_set.all_prompts()
    tokens = loaded.tokenizer(texts)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokens[start : start + batch_size].to(loaded.device)
            chunks.append(F.normalize(loaded.model.encode_text(batch).float(), dim=-1))
        per_prompt = torch.cat(chunks)
        num_classes, num_templates = len(prompt_set.classes), len(prompt_set.templates)
        mean = per_prompt.reshape(num_classes, num_templates, -1).mean(dim=1)
        return F.normalize(mean, dim=-1)


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def text_cache_key(spec: ModelSpec, prompt_set: PromptSet) -> str:
    """The canonical key text of a text classifier: model, weights, versions, prompts, precision."""
    return cache.key_text(
        {
            "kind": "text-classifier",
            "model": spec.model,
            "weights": weights_identity(spec, cache.hash_memo_dir()),
            "open_clip": _package_version("open_clip_torch"),
            "torch": _package_version("torch"),
            "precision": "fp32",
            "classes": list(prompt_set.classes),
            "templates": list(prompt_set.templates),
        }
    )


def get_text_classifier(
    spec: ModelSpec,
    prompt_set: PromptSet,
    load: Callable[[], LoadedModel],
    *,
    use_cache: bool = True,
    device: str | None = None,
    batch_size: int = 256,
) -> TextClassifier:
    """The classifier for ``prompt_set`` from the cache, or built with ``load()`` and stored.

    ``load`` is only called on a miss, so a cache hit needs no model. A cache file that cannot be
    used is reported (logger ``zeroshot``, level warning) and rebuilt.
    """
    start = time.perf_counter()
    path = None
    key = None
    if use_cache:
        key = text_cache_key(spec, prompt_set)
        path = cache.entry_path(cache.key_digest(key))
        if path.exists():
            try:
                entry = cache.load_entry(path, key, len(prompt_set.classes))
            except (cache.CorruptEntry, OSError) as e:
                log.warning("cache file %s is unusable (%s); rebuilding it", path, e)
            else:
                weights = entry.weights
                if device is not None:  # without a device, a hit stays numpy: no torch import at all
                    import torch

                    weights = torch.from_numpy(weights.copy()).to(device)
                return TextClassifier(prompt_set, weights, path, True, time.perf_counter() - start)

    loaded = load()
    weights = encode_prompt_set(loaded, prompt_set, batch_size)
    if use_cache and path is not None and key is not None:
        cache.save_entry(
            path,
            key,
            weights.cpu().numpy(),
            {
                "name": prompt_set.name,
                "model": spec.label,
                "classes": len(prompt_set.classes),
                "templates": len(prompt_set.templates),
            },
        )
    if device is not None:
        weights = weights.to(device)
    return TextClassifier(prompt_set, weights, path, False, time.perf_counter() - start)
