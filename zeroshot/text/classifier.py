"""The text side: prompt ensembles -> one unit vector per class, cached on disk.

The math is the CLIP paper's prompt ensembling, as open_clip's ``build_zero_shot_classifier``
does it: encode every prompt, L2-normalize each embedding, average a class's prompts, and
L2-normalize the average again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base import cache
from ..base.errors import CacheError
from ..model.models import LoadedModel, ModelSpec
from ..model.weightfiles import weights_identity
from .prompts import PromptSet
from .texttower import encode_prefixed, encode_trimmed, prefix_shareable, shared_prefix_length, trimmable

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger("zeroshot")
Progress = Callable[[int], None] | None  # hears how many more prompts were encoded


@dataclass
class TextClassifier:
    """Class embeddings for one prompt set and one model: ``weights`` is a float32 numpy array
    [num_classes, dim] of unit rows, always (a cache hit needs no torch); :meth:`tensor` puts it on
    a device for scoring."""

    prompt_set: PromptSet
    weights: np.ndarray
    cache_path: Path | None
    cache_hit: bool
    seconds: float
    # What scoring needs from the model, stored with a cached classifier (:func:`scoring_facts`):
    # with it and every image embedding cached, classify needs no model at all.
    scoring: dict[str, Any] | None = None
    _on: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.prompt_set.classes

    def tensor(self, device: Any = "cpu") -> Any:
        """The weights as a torch tensor on ``device`` (made once per device)."""
        key = str(device)
        if key not in self._on:
            import torch

            self._on[key] = torch.from_numpy(self.weights).to(device)
        return self._on[key]


def _encode_grouped(
    loaded: LoadedModel, tokens: Any, groups: list[list[int]], batch_size: int, progress: Progress = None
) -> Any:
    """Unnormalized-then-normalized embeddings of ``tokens`` rows, each group sharing its prefix."""
    import torch
    import torch.nn.functional as F

    model = loaded.model
    lengths = (tokens != 0).sum(dim=1)
    out = torch.empty(0)
    with torch.inference_mode():
        for group in groups:
            idx = torch.tensor(group, dtype=torch.long)
            rows, lens = tokens[idx], lengths[idx]
            p = shared_prefix_length(rows, lens)
            prefix = rows[0, :p].to(loaded.device)
            order = torch.argsort(lens, stable=True)
            for start in range(0, len(group), batch_size):
                pick = order[start : start + batch_size]
                longest = int(lens[pick].max())
                suffix = rows[pick, p:longest].to(loaded.device)
                feats = F.normalize(encode_prefixed(model, prefix, suffix).float(), dim=-1)
                if out.numel() == 0:
                    out = torch.empty(len(tokens), feats.shape[1], device=feats.device)
                out[idx[pick].to(feats.device)] = feats
                if progress is not None:
                    progress(len(pick))
    return out


def tokenize(loaded: LoadedModel, texts: list[str]) -> Any:
    """The model's tokens for ``texts``; a prompt longer than the model's context is an error.

    open_clip's tokenizer silently cuts a long prompt to the context length (77 for CLIP), so the
    model would embed the start of it. Only rows that fill the context can have been cut; for
    those the exact length is counted (open_clip's ``SimpleTokenizer``) and any that do not fit
    are reported by :class:`~zeroshot.base.errors.PromptError`, naming the first.
    """
    tokens = loaded.tokenizer(texts)
    full = (tokens[:, -1] != 0).nonzero().flatten().tolist() if len(texts) else []
    tok = loaded.tokenizer
    encode, clean = getattr(tok, "encode", None), getattr(tok, "clean_fn", None)
    if not full or encode is None or clean is None or getattr(tok, "reduction_fn", None) is not None:
        return tokens
    context = tokens.shape[1]
    over = [(texts[i], len(encode(clean(texts[i]))) + 2) for i in full]
    over = [(t, n) for t, n in over if n > context]
    if over:
        from ..base.errors import PromptError

        text, n = over[0]
        shown = text if len(text) <= 80 else text[:77] + "..."
        more = f" (and {len(over) - 1} more)" if len(over) > 1 else ""
        raise PromptError(
            f"prompt {shown!r} is {n} tokens, over the {context} this model reads{more}: "
            "shorten the label or the template"
        )
    return tokens


def encode_texts(
    loaded: LoadedModel,
    texts: list[str],
    batch_size: int = 256,
    trim: bool | None = None,
    progress: Progress = None,
    engine: Any = None,
) -> Any:
    """L2-normalized embeddings of ``texts`` [N, dim], float32, in the order given.

    With ``trim`` (default: whenever :func:`trimmable`), prompts are sorted by token length and each
    batch is cut to its longest prompt: the same numbers as the 77-token padded batch (to float
    rounding, ~1e-6) at a fraction of the cost. Tokenization happens once. ``engine``: the text tower
    in ONNX Runtime (:mod:`zeroshot.towers.onnxtext`), which takes such cut batches.
    """
    import torch
    import torch.nn.functional as F

    from ..model.devices import exact_fp32

    model = loaded.model
    trim = (trimmable(model) if trim is None else trim) or engine is not None
    tokens = tokenize(loaded, texts)
    order = torch.argsort((tokens != 0).sum(dim=1), stable=True) if trim else torch.arange(len(texts))
    out = torch.empty(len(texts), 0)
    chunks = []
    with torch.inference_mode(), exact_fp32(loaded.device, loaded.precision):
        for start in range(0, len(texts), batch_size):
            batch = tokens[order[start : start + batch_size]].to(loaded.device)
            if engine is not None:
                feats = engine(batch[:, : int((batch != 0).sum(dim=1).max())])
            else:
                feats = encode_trimmed(model, batch) if trim else model.encode_text(batch)
            chunks.append(F.normalize(feats.float(), dim=-1))
            if progress is not None:
                progress(len(batch))
        if chunks:
            stacked = torch.cat(chunks)
            out = torch.empty_like(stacked)
            out[order.to(stacked.device)] = stacked
    return out


def encode_prompt_set(
    loaded: LoadedModel,
    prompt_set: PromptSet,
    batch_size: int = 256,
    trim: bool | None = None,
    progress: Progress = None,
) -> Any:
    """[num_classes, dim] float32 class embeddings on the model's device.

    Prompts of one template share their leading tokens' computation where the tower allows it
    (:func:`prefix_shareable`), and are otherwise cut to their longest prompt (:func:`trimmable`);
    ``trim=False`` runs everything padded to the context length, as open_clip does.

    Each prompt embedding is L2-normalized, a class's prompts are averaged, and the average is
    L2-normalized again (open_clip's ``build_zero_shot_classifier``). With per-class prompts
    (``prompt_set.specs``) a class averages exactly its own prompts, however many.
    """
    import torch
    import torch.nn.functional as F

    if not prompt_set.uniform:
        return _encode_per_class(loaded, prompt_set, batch_size, trim, progress)
    num_classes, num_templates = len(prompt_set.classes), len(prompt_set.templates)
    prompts = prompt_set.all_prompts()
    engine = loaded.text_engine() if loaded.text_engine is not None and trim is not False else None
    if engine is not None:
        per_prompt = encode_texts(loaded, prompts, batch_size, True, progress, engine=engine)
    elif (trim is None or trim) and prompts and prefix_shareable(loaded.model):
        # Class-major order: template t of class c is row c * T + t; one group per template.
        groups = [list(range(t, len(prompts), num_templates)) for t in range(num_templates)]
        per_prompt = _encode_grouped(loaded, tokenize(loaded, prompts), groups, batch_size, progress)
    else:
        per_prompt = encode_texts(loaded, prompts, batch_size, trim, progress)
    with torch.inference_mode():
        mean = per_prompt.reshape(num_classes, num_templates, -1).mean(dim=1)
        return F.normalize(mean, dim=-1)


def _encode_per_class(
    loaded: LoadedModel, prompt_set: PromptSet, batch_size: int, trim: bool | None, progress: Progress
) -> Any:
    """:func:`encode_prompt_set` for classes with prompts of their own (a different count each)."""
    import torch
    import torch.nn.functional as F

    prompts: list[str] = []  # class by class, so each class's rows are contiguous
    counts: list[int] = []
    by_template: dict[int | None, list[int]] = {}  # template index (None: literal) -> rows, for prefix sharing
    for rows in prompt_set.class_rows():
        counts.append(len(rows))
        for t, prompt in rows:
            by_template.setdefault(t, []).append(len(prompts))
            prompts.append(prompt)
    engine = loaded.text_engine() if loaded.text_engine is not None and trim is not False else None
    if engine is not None:
        per_prompt = encode_texts(loaded, prompts, batch_size, True, progress, engine=engine)
    elif (trim is None or trim) and prefix_shareable(loaded.model):
        per_prompt = _encode_grouped(
            loaded, tokenize(loaded, prompts), list(by_template.values()), batch_size, progress
        )
    else:
        per_prompt = encode_texts(loaded, prompts, batch_size, trim, progress)
    with torch.inference_mode():
        means = [rows.mean(dim=0) for rows in per_prompt.split(counts)]
        return F.normalize(torch.stack(means), dim=-1)


def text_cache_key(spec: ModelSpec, prompt_set: PromptSet, precision: str = "fp32") -> str:
    """The canonical key text of a text classifier: model, weights, versions, prompts, precision."""
    return cache.key_text(
        {
            "kind": "text-classifier",
            "model": spec.model,
            "weights": weights_identity(spec, cache.hash_memo_dir()),
            "open_clip": cache.package_version("open_clip_torch"),
            "torch": cache.package_version("torch"),
            "precision": precision,
            "classes": list(prompt_set.classes),
            "templates": list(prompt_set.templates),
            # Only present when some class has prompts of its own, so plain sets keep their keys.
            **({"class_prompts": prompt_set.specs_data()} if not prompt_set.uniform else {}),
        }
    )


def get_text_classifier(
    spec: ModelSpec,
    prompt_set: PromptSet,
    load: Callable[[], LoadedModel],
    *,
    use_cache: bool = True,
    batch_size: int = 256,
    precision: str = "fp32",
    refresh: bool = False,
    progress: Progress = None,
) -> TextClassifier:
    """The classifier for ``prompt_set`` from the cache, or built with ``load()`` and stored.

    ``load`` is only called on a miss, so a cache hit needs no model. A cache file that cannot be
    used is reported (logger ``zeroshot``, level warning) and rebuilt. ``refresh`` rebuilds and
    stores it even when the cache has it (``build-prompts --force``).
    """
    start = time.perf_counter()
    path = None
    key = None
    if use_cache:
        key = text_cache_key(spec, prompt_set, precision)
        path = cache.entry_path(cache.key_digest(key))
        if path.exists() and not refresh:
            try:
                entry = cache.load_entry(path, key, len(prompt_set.classes))
            except (cache.CorruptEntry, OSError) as e:
                log.warning("cache file %s is unusable (%s); rebuilding it", path, e)
            else:
                took = time.perf_counter() - start
                return TextClassifier(prompt_set, entry.weights, path, True, took, _stored_scoring(entry.meta))

    loaded = load()
    weights = encode_prompt_set(loaded, prompt_set, batch_size, progress=progress).float().cpu().numpy()
    scoring = scoring_facts(loaded)
    if use_cache and path is not None and key is not None:
        try:
            cache.save_entry(path, key, weights, _entry_info(spec, prompt_set, scoring))
        except CacheError as e:
            cache.warn_unwritable("the text classifier", e.__cause__ or e, "it is built again on every run")
            path = None
    return TextClassifier(prompt_set, weights, path, False, time.perf_counter() - start, scoring)


def _entry_info(spec: ModelSpec, prompt_set: PromptSet, scoring: dict[str, Any]) -> dict[str, Any]:
    import json

    return {
        "name": prompt_set.name,
        "model": spec.label,
        "classes": len(prompt_set.classes),
        "templates": len(prompt_set.templates),
        "prompts": prompt_set.prompt_count(),
        "scoring": json.dumps(scoring, sort_keys=True),
    }


def logit_bias(loaded: LoadedModel) -> float | None:
    """The learned bias of a sigmoid-trained model (SigLIP), or None for a softmax one (CLIP)."""
    bias = getattr(loaded.model, "logit_bias", None)
    return None if bias is None else float(bias.detach().float().reshape(-1)[0])


def scoring_facts(loaded: LoadedModel) -> dict[str, Any]:
    """What scoring images against a classifier needs from the model, besides its image tower:
    the learned temperature, the learned bias (sigmoid models) and the image-embedding cache's key
    (the model identity and preprocessing its embeddings belong to)."""
    from ..model.weightfiles import image_cache_key

    return {
        "logit_scale": loaded.logit_scale,
        "logit_bias": logit_bias(loaded),
        "image_key": image_cache_key(loaded),
        "embed_dim": loaded.embed_dim,
    }


def _stored_scoring(meta: dict[str, str]) -> dict[str, Any] | None:
    """A cache entry's scoring facts, when it has them whole (entries from before they were stored
    have none; the first run that loads the model adds them: :func:`remember_scoring`)."""
    import json

    try:
        facts = json.loads(meta.get("scoring", "null"))
    except json.JSONDecodeError:
        return None
    if not isinstance(facts, dict):
        return None
    ok = (
        isinstance(facts.get("logit_scale"), float)
        and isinstance(facts.get("logit_bias"), float | None)
        and isinstance(facts.get("image_key"), str)
        and isinstance(facts.get("embed_dim"), int)
    )
    return facts if ok else None


def remember_scoring(spec: ModelSpec, text: TextClassifier, loaded: LoadedModel) -> None:
    """Store the model's scoring facts with a cached classifier that lacks them (atomically; a
    cache that cannot be written is passed over: it only costs the next run its shortcut)."""
    entry = text.cache_path
    if entry is None or text.scoring is not None or entry.parent != cache.cache_dir() / cache.TEXT_SUBDIR:
        return  # not a cache entry (a classifier file names itself here), or it has them
    text.scoring = scoring_facts(loaded)
    try:
        key = cache.read_metadata(entry).get("key", "")
        cache.save_entry(entry, key, text.weights, _entry_info(spec, text.prompt_set, text.scoring))
    except (cache.CorruptEntry, CacheError, OSError) as e:
        log.debug("could not add scoring facts to %s: %s", text.cache_path, e)
