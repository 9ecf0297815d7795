"""Accuracy on labelled images: top-1/top-5, per-class recall, confusion, and per-template top-1.

Labelled images come from a folder with one sub-folder per class, or from a dataset's IDX files
(Fashion-MNIST). Image embeddings are computed once; the ensemble classifier and every
single-template classifier are then scored on the same embeddings, so "ensembling helps" is
measured, not assumed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.errors import UsageError
from ..image.images import ImageError, Input, is_video_name, walk_images
from ..model.models import LoadedModel
from ..text.classifier import TextClassifier, encode_prompt_set
from ..text.prompts import PromptSet
from ..towers.pipeline import DecodeOptions, ImageEncoder


@dataclass(frozen=True)
class Labelled:
    """One labelled image: a file path, or an index into an in-memory array of images."""

    key: str | int
    label: int
    error: str | None = None  # known before decoding, e.g. a folder that cannot be listed


def _norm(name: str) -> str:
    """A class name's letters and digits, any script, case folded: folder names cannot hold '/',
    so 't-shirt/top' must match a folder 't-shirt_top'."""
    return re.sub(r"[\W_]+", "", name.casefold())


def class_of_folder(name: str) -> str:
    """The class a sub-folder names, as users name folders: ``ankle_boot`` is "ankle boot" (runs of
    underscores and spaces become one space; hyphens stay, as in "t-shirt")."""
    return " ".join(name.replace("_", " ").split())


def _class_folders(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder (eval needs one sub-folder per class)")
    subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        raise UsageError(f"{folder}: no class sub-folders")
    return subs


def folder_classes(folder: Path) -> list[str]:
    """The classes of a folder of class sub-folders, in the sub-folders' order (sorted by name),
    each as :func:`class_of_folder` reads its name: the prompts' labels and the records' labels.
    Two sub-folders that name one class are an error."""
    subs = _class_folders(folder)
    classes = [class_of_folder(s) for s in subs]
    seen: dict[str, str] = {}
    for sub, cls in zip(subs, classes, strict=True):
        if not _norm(cls):
            raise UsageError(f"{folder}: sub-folder {sub!r} names no class (no letter or digit)")
        if _norm(cls) in seen:
            raise UsageError(f"{folder}: sub-folders {seen[_norm(cls)]!r} and {sub!r} name the same class")
        seen[_norm(cls)] = sub
    return classes


def folder_items(folder: Path, classes: tuple[str, ...]) -> Iterator[Labelled]:
    """Images under each class sub-folder, labelled by the class its folder name matches (letters
    and digits alike: ``ankle_boot`` is "ankle boot", ``t-shirt_top`` is "t-shirt/top")."""
    index = {_norm(c): i for i, c in enumerate(classes)}
    subs = _class_folders(folder)
    unknown = [s for s in subs if _norm(s) not in index]
    if unknown:
        raise UsageError(
            f"{folder}: sub-folder(s) {', '.join(unknown)} match no class; classes are: {', '.join(classes)}"
        )
    for sub in subs:
        for inp in walk_images(str(folder / sub), set()):
            yield Labelled(inp.path, index[_norm(sub)], inp.error)


def image_features(
    loaded: Any,
    items: Iterable[Labelled],
    array: Any = None,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    keys_out: list[str | int] | None = None,
    max_bytes: int | None = None,
    image_cache: Any = None,
    progress: Callable[[int], None] | None = None,
    every: float = 1.0,
) -> tuple[Any, Any, list[dict[str, str]]]:
    """(normalized features [N, D], labels [N], failures) for the items that decoded.

    Files go through ``classify``'s own image core (:class:`~zeroshot.towers.pipeline.ImageEncoder`:
    the same decoding, preprocessing and batching), so what ``eval`` measures is what ``classify``
    ships; in-memory images (IDX datasets) enter it decoded by the same decoder.
    ``keys_out``, when given, receives each decoded item's key (path or array index), in order.
    ``max_bytes``: the byte cap per file (None: the default; 0: none), as for ``classify``;
    ``image_cache``: an :class:`~zeroshot.image.imagecache.ImageEmbeddingCache` for files seen before;
    ``progress`` hears how many more images each batch took. ``loaded`` is the model, or the image
    tower (:mod:`zeroshot.towers.runtimes`) to run the images through. Videos in the folders give a row per
    frame sampled ``every`` seconds, each keyed by the video's path.
    """
    import torch
    import torch.nn.functional as F

    from ..image import video

    options = DecodeOptions(workers=workers)
    if max_bytes is not None:
        options.max_bytes = max_bytes
    encoder = ImageEncoder(loaded, batch_size=batch_size, options=options, image_cache=image_cache)
    labelled: dict[int, Labelled] = {}
    clips: dict[str, Labelled] = {}  # a video's frames all carry its label

    def as_input(item: Labelled) -> Input:
        inp = Input(str(item.key), item.error)
        if array is None and is_video_name(inp.path):
            clips[inp.path] = item
        else:
            labelled[id(inp)] = item
        return inp

    if array is None:
        frames = video.VideoOptions(every=every, max_pixels=options.max_pixels)
        batches = encoder.batches(video.expand((as_input(item) for item in items), frames))
    else:
        batches = encoder.encode(_decoded_array(encoder, array, items, as_input, batch_size))
    feats, labels, failed = [], [], []
    for batch in batches:
        if progress is not None:
            progress(len(batch))
        good = []
        for e in batch:
            item = labelled.pop(id(e.input), None) or clips[e.input.path]
            if e.feature is None:
                failed.append({"path": e.input.path, "error": e.error or "unknown error"})
                continue
            good.append(torch.from_numpy(e.feature) if not isinstance(e.feature, torch.Tensor) else e.feature)
            labels.append(item.label)
            if keys_out is not None:
                keys_out.append(item.key)
        if good:
            feats.append(F.normalize(torch.stack(good), dim=-1).cpu())
    dim = feats[0].shape[1] if feats else 0
    return (torch.cat(feats) if feats else torch.empty(0, dim)), torch.tensor(labels, dtype=torch.long), failed


def _decoded_array(
    encoder: ImageEncoder, array: Any, items: Iterable[Labelled], as_input: Callable[[Labelled], Input], size: int
) -> Iterator[list[tuple[Input, Any, str | None]]]:
    """In-memory greyscale images, decoded as a file's pixels would be, in batches of ``size``."""
    from PIL import Image

    batch: list[tuple[Input, Any, str | None]] = []
    for item in items:
        assert isinstance(item.key, int)
        try:
            payload, error = encoder.decoder.decode_image(Image.fromarray(array[item.key], "L")), None
        except ImageError as e:
            payload, error = None, str(e)
        batch.append((as_input(item), payload, error))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def share(hits: Any) -> float:
    """The share of true entries of a boolean tensor, as a count over a count (exactly 0.9 for 9
    of 10), not a float32 mean (0.8999999761581421 once printed)."""
    n = len(hits)
    return int(hits.sum()) / n if n else 0.0


def _top1(feats: Any, weights: Any, labels: Any) -> float:
    return share((feats @ weights.T).argmax(dim=1).eq(labels)) if len(labels) else 0.0


def evaluate(
    loaded: LoadedModel,
    text: TextClassifier,
    feats: Any,
    labels: Any,
    *,
    per_template: bool = True,
) -> dict[str, Any]:
    """Accuracy figures of ``text`` on labelled features, plus each template alone."""
    import torch

    prompt_set: PromptSet = text.prompt_set
    classes = list(prompt_set.classes)
    n, c = len(labels), len(classes)
    weights = text.tensor(feats.device)
    sims = feats @ weights.T
    k = min(5, c)
    topk = sims.topk(k, dim=1).indices if n else torch.empty(0, k, dtype=torch.long)
    pred = topk[:, 0] if n else torch.empty(0, dtype=torch.long)
    confusion = torch.zeros(c, c, dtype=torch.long)
    if n:
        confusion.index_put_((labels, pred), torch.ones(n, dtype=torch.long), accumulate=True)
    support = confusion.sum(1)
    recall = {
        cls: (float(confusion[i, i]) / float(support[i]) if support[i] else None) for i, cls in enumerate(classes)
    }
    present = [r for r in recall.values() if r is not None]
    out: dict[str, Any] = {
        "images": n,
        "classes": classes,
        "templates": len(prompt_set.templates),
        "top1": share(pred.eq(labels)) if n else 0.0,
        f"top{k}": share(topk.eq(labels[:, None]).any(dim=1)) if n else 0.0,
        "mean_per_class_recall": sum(present) / len(present) if present else 0.0,
        "per_class_recall": recall,
        "confusion_matrix": confusion.tolist(),
    }
    if per_template and len(prompt_set.templates) > 1:
        singles = {}
        for template in prompt_set.templates:
            one = prompt_set.with_templates((template,), name=template)
            singles[template] = _top1(feats, encode_prompt_set(loaded, one).to(feats.device).float(), labels)
        mean = sum(singles.values()) / len(singles)
        out["template_top1"] = singles
        out["template_top1_mean"] = mean
        out["template_top1_best"] = max(singles.values())
        out["ensemble_minus_template_mean"] = out["top1"] - mean
    return out


def per_video(feats: Any, labels: Any, keys: list[str | int], text: TextClassifier, scale: float) -> dict[str, Any]:
    """Accuracy per video: a video's label is the best of its frames' mean probabilities (as
    ``classify --per-video`` gives it); the frames count as images in the other figures. Empty
    when there are no videos."""
    import numpy as np

    from .ranking import probabilities

    rows: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if isinstance(key, str) and is_video_name(key):
            rows.setdefault(key, []).append(i)
    if not rows:
        return {}
    probs = probabilities(feats.numpy(), text.weights, scale)
    hits = [int(np.argmax(probs[idx].mean(axis=0))) == int(labels[idx[0]]) for idx in rows.values()]
    return {
        "videos": len(rows),
        "video_frames": sum(len(v) for v in rows.values()),
        "video_top1": sum(hits) / len(hits),
    }


@dataclass
class EvalRun:
    """Everything one evaluation computed: the record, failures, and the per-image data behind them."""

    record: dict[str, Any]
    failed: list[dict[str, str]]
    feats: Any  # normalized image features [N, D]
    labels: Any  # true class indices [N]
    keys: list[str | int]  # file path or index into ``array``, per row
    array: Any = None  # the in-memory images (IDX datasets), else None

    def sims(self, text: TextClassifier) -> Any:
        """Cosine similarities [N, C] of every image with every class."""

        return self.feats @ text.tensor(self.feats.device).T


def run_eval(loaded: LoadedModel, text: TextClassifier, **options: Any) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Evaluate on a folder or on IDX files (options as :func:`evaluate_run`); returns (record, failures)."""
    run = evaluate_run(loaded, text, **options)
    return run.record, run.failed


def evaluate_run(
    loaded: LoadedModel,
    text: TextClassifier,
    *,
    folder: Path | None,
    idx_dir: Path | None,
    split: str,
    limit: int | None,
    batch_size: int,
    workers: int | None,
    max_bytes: int | None = None,
    progress: Callable[[int], None] | None = None,
    tower: Any = None,
    every: float = 1.0,
) -> EvalRun:
    """:func:`run_eval`, keeping the per-image data (for calibration and reports); ``tower``: the
    image tower to run the images through (default: the model's torch one)."""
    import itertools

    start = time.perf_counter()
    array = None
    if folder is not None:
        items: Iterable[Labelled] = folder_items(folder, text.prompt_set.classes)
        source = str(folder)
    else:
        from ..image.idx import load_split

        array, raw = load_split(idx_dir, split)
        if int(raw.max()) >= len(text.prompt_set.classes):
            raise UsageError(f"labels go up to {int(raw.max())} but there are {len(text.prompt_set.classes)} classes")
        items = (Labelled(i, int(y)) for i, y in enumerate(raw))
        source = f"{text.prompt_set.name} ({split} split)"
    if limit:
        items = itertools.islice(items, limit)
    keys: list[str | int] = []
    feats, labels, failed = image_features(tower or loaded, items, array, batch_size=batch_size, workers=workers,
                                          keys_out=keys, max_bytes=max_bytes, progress=progress,
                                          every=every)  # fmt: skip
    from .manifest import identity

    record: dict[str, Any] = {"dataset": source}
    # The same identity fields as a classify manifest: which model, weights, preprocessing, prompts.
    record.update(identity(loaded.spec, text.prompt_set, precision=loaded.precision, device=str(loaded.device),
                           preprocess=repr(loaded.preprocess)))  # fmt: skip
    record.update(evaluate(loaded, text, feats, labels))
    record.update(per_video(feats, labels, keys, text, loaded.logit_scale))
    record["failed"] = len(failed)
    record["seconds"] = round(time.perf_counter() - start, 2)
    return EvalRun(record, failed, feats, labels, keys, array)


__all__ = [
    "EvalRun",
    "Labelled",
    "evaluate",
    "evaluate_run",
    "folder_classes",
    "folder_items",
    "image_features",
    "run_eval",
]
