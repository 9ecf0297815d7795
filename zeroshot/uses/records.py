"""Features to records: an input stream classified, encoded batches scored against a text
classifier into one record per input, in input order (both engines' last step, the library's and
the model-free one's). Scoring itself is :mod:`zeroshot.uses.ranking`'s."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

from ..image.images import Input
from ..image.video import with_time
from ..model.models import LoadedModel
from ..text.classifier import TextClassifier
from ..towers.pipeline import DecodeOptions, Encoded, ImageEncoder
from .ranking import Record, error_record, feature_records


def classify_inputs(
    loaded: LoadedModel,
    text: TextClassifier,
    inputs: Iterable[Input],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int | None = None,
    image_cache: Any = None,
    options: DecodeOptions | None = None,
    multi_label: Any = None,
) -> Iterator[Record]:
    """Yield one record per input, in order: a classification, or ``{"path", "error"}``.

    With ``multi_label`` (a :class:`~zeroshot.uses.ranking.MultiLabel`), each label is scored on its own
    and the record lists every label over the threshold (``labels``).

    With ``image_cache`` (an :class:`~zeroshot.image.imagecache.ImageEmbeddingCache`), files whose
    content was seen before skip decoding and the image tower; new embeddings are stored.
    """
    encoder = ImageEncoder(loaded, batch_size=batch_size, workers=workers, image_cache=image_cache, options=options)
    return encoded_records(encoder.batches(inputs), text.weights, loaded.logit_scale, text.classes, top_k, multi_label)


def stacked(features: list[Any]) -> Any:
    """One [N, D] float32 array of the features (one copy off the device for tensors)."""
    import numpy as np

    if all(isinstance(f, np.ndarray) for f in features):
        return np.stack(features).astype(np.float32, copy=False)
    import torch

    device = next(f.device for f in features if isinstance(f, torch.Tensor))
    with torch.inference_mode():
        rows = [f if isinstance(f, torch.Tensor) else torch.from_numpy(f).to(device) for f in features]
        return torch.stack(rows).float().cpu().numpy()


def encoded_records(
    batches: Iterable[list[Encoded]],
    weights: Any,
    scale: float,
    classes: Sequence[str],
    top_k: int,
    multi_label: Any = None,
) -> Iterator[Record]:
    """Encoded batches -> one record per input, in order (both engines' last step, and the
    model-free one's). Features are torch tensors, or numpy arrays (the image cache's) when no
    model ran: scoring is numpy's either way (:mod:`zeroshot.uses.ranking`)."""
    for records in record_batches(batches, weights, scale, classes, top_k, multi_label):
        yield from records


def record_batches(
    batches: Iterable[list[Encoded]],
    weights: Any,
    scale: float,
    classes: Sequence[str],
    top_k: int,
    multi_label: Any = None,
) -> Iterator[list[Record]]:
    """:func:`encoded_records` a model batch at a time (a resumable output keeps whole batches)."""
    for batch in batches:
        good = [e for e in batch if e.feature is not None]
        recs: Iterator[Record] = iter(())
        if good:
            recs = iter(feature_records([e.input.path for e in good], stacked([e.feature for e in good]),
                                        weights, scale, classes, top_k, multi_label))  # fmt: skip
        yield [cast(Record, with_time(cast(dict, next(recs) if e.feature is not None
                                            else error_record(e.input.path, e.error or "unknown error")), e.input))
               for e in batch]  # fmt: skip
