"""zeroshot: CLIP zero-shot image classification with cached prompt ensembles.

Library use, without the CLI::

    import zeroshot

    clf = zeroshot.Zeroshot(model="ViT-B-32", pretrained="openai")
    text = clf.text_classifier(zeroshot.resolve_prompt_set(labels=["cat", "dog"]))
    for record in clf.classify(["photo.jpg"], text):
        print(record["label"], record["score"])

Importing this package does not import torch; loading a model does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .errors import ModelLoadError, PromptError, UsageError, ZeroshotError
from .prompts import PromptSet, load_pack, resolve_prompt_set

__version__ = "0.1.0"

__all__ = [
    "ModelLoadError",
    "PromptError",
    "PromptSet",
    "UsageError",
    "Zeroshot",
    "ZeroshotError",
    "__version__",
    "load_pack",
    "resolve_prompt_set",
]


class Zeroshot:
    """A loaded model plus what it needs to classify: text classifiers and batched image scoring."""

    def __init__(
        self,
        model: str | None = None,
        pretrained: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        preprocess: str | None = None,
    ) -> None:
        from .models import load_model, resolve_device, resolve_precision, resolve_spec

        self.spec = resolve_spec(model, pretrained, preprocess)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.loaded = load_model(self.spec, self.device, self.precision)

    def text_classifier(self, prompt_set: PromptSet, *, use_cache: bool = True) -> Any:
        """The :class:`~zeroshot.classifier.TextClassifier` for ``prompt_set`` (cached on disk)."""
        from .classifier import get_text_classifier

        return get_text_classifier(self.spec, prompt_set, lambda: self.loaded, use_cache=use_cache, device=self.device)

    def classify(
        self,
        paths: Iterable[str],
        text: Any,
        *,
        top_k: int = 5,
        batch_size: int = 32,
        workers: int | None = None,
        decoder: str = "auto",
        jpeg_draft: bool = False,
        max_bytes: int | None = None,
        timeout: float | None = None,
        image_cache: Any = None,
        multi_label: bool = False,
        threshold: float = 0.5,
        calibration: Any = None,
    ) -> Iterator[dict[str, Any]]:
        """One record per path (files or folders), in order, as the CLI prints them.

        ``workers``, ``decoder`` and ``jpeg_draft`` are the CLI's ``--workers``, ``--decoder`` and
        ``--jpeg-draft``; ``max_bytes`` and ``timeout`` the CLI's ``--max-bytes`` and ``--timeout``
        (None: their defaults; paths may be ``http(s)://`` URLs); ``image_cache`` an
        :class:`~zeroshot.imagecache.ImageEmbeddingCache`.
        ``multi_label``/``threshold``/``calibration`` (a :class:`~zeroshot.calibration.Calibration`
        or a path to one) are ``--multi-label``, ``--threshold`` and ``--calibration``.
        """
        from .images import iter_inputs
        from .pipeline import DecodeOptions, classify_inputs

        rule = None
        if multi_label or calibration is not None:
            from .classifier import resolve_multilabel

            rule = resolve_multilabel(
                self.spec, text.prompt_set, lambda: self.loaded, threshold=threshold, calibration=calibration
            )
        options = DecodeOptions(workers=workers, decoder=decoder, jpeg_draft=jpeg_draft)
        if max_bytes is not None:
            options.max_bytes = max_bytes
        if timeout is not None:
            options.timeout = timeout
        return classify_inputs(
            self.loaded, text, iter_inputs(paths), top_k=top_k, batch_size=batch_size,
            image_cache=image_cache, options=options, multi_label=rule,
        )  # fmt: skip
