"""zeroshot: CLIP zero-shot image classification with cached prompt ensembles.

Library use, without the CLI::

    import zeroshot

    clf = zeroshot.Zeroshot(model="ViT-B-32", pretrained="openai")
    for record in clf.classify(["photo.jpg"], ["cat", "dog"]):
        print(record["label"], record["score"])

The text side can also be a prompt pack's name (``clf.classify(paths, "cifar10")``), a
:class:`PromptSet`, or a text classifier made once and reused (``clf.text_classifier(...)``).

Importing this package does not import torch; loading a model does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base.errors import ModelLoadError, PromptError, UsageError, ZeroshotError
from .text.prompts import PromptSet, load_pack, resolve_prompt_set

if TYPE_CHECKING:
    from .uses.ranking import Record

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
        runtime: str | None = None,
    ) -> None:
        """``runtime``: where the towers run, as ``--runtime`` (auto: the image tower on ONNX Runtime
        on the CPU, exported on first use and cached, text on torch; onnx: both towers on ONNX Runtime;
        torch; None: ``ZEROSHOT_RUNTIME``, else auto)."""
        from .assembly import ModelChoice, prepare_model
        from .model.devices import resolve_precision
        from .towers.runtimes import resolve_runtime, text_runtime

        self.choice = ModelChoice(model, pretrained, preprocess, device, precision, runtime)
        self.loaded = prepare_model(self.choice)
        self.spec, self.device = self.loaded.spec, self.loaded.device
        self.precision = resolve_precision(precision, self.device)  # int8: the image tower's, in ONNX Runtime
        self.runtime = resolve_runtime(runtime, self.device, self.precision)
        self._towers: list[Any] = []
        if text_runtime(runtime, self.runtime) == "onnx":  # text classifiers built in ONNX Runtime too
            from .assembly import Loading, text_engine_for

            self.loaded.text_engine = text_engine_for(self.loaded, Loading())

    def image_tower(self) -> Any:
        """The image tower images go through (:mod:`zeroshot.towers.runtimes`), made on first use."""
        if not self._towers:
            from .assembly import Loading, make_tower

            self._towers.append(make_tower(self.runtime, self.precision, lambda: self.loaded, Loading()))
        return self._towers[0]

    def text_classifier(
        self, prompt_set: PromptSet | None = None, *, classifier_file: Any = None, use_cache: bool = True
    ) -> Any:
        """The :class:`~zeroshot.text.classifier.TextClassifier` for ``prompt_set`` (cached on disk), or
        the one a classifier file holds (``classify --classifier``: a path or a loaded
        :class:`~zeroshot.uses.export.ClassifierFile`, checked against this model)."""
        from .assembly import prepare

        if isinstance(classifier_file, str | os.PathLike):
            from .uses.export import load_classifier

            classifier_file = load_classifier(Path(classifier_file))
        if classifier_file is not None:
            from .uses.export import check_model

            check_model(classifier_file, self.spec)
        return prepare(
            self.choice, prompt_set, classifier_file=classifier_file, use_cache=use_cache, loaded=self.loaded
        ).text

    def adapt(
        self,
        examples: str | os.PathLike[str],
        prompt_set: PromptSet | None = None,
        *,
        seed: int = 0,
        workers: int | None = None,
        image_cache: Any = None,
    ) -> Any:
        """A text classifier adapted to labelled examples (a folder with one sub-folder per class),
        as ``zeroshot adapt`` makes it; ``prompt_set`` defaults to the sub-folder names (underscores
        read as spaces: ``ankle_boot/`` is "ankle boot"). Use it with
        :meth:`classify`, or write it with :func:`zeroshot.uses.export.save_classifier`."""
        from .uses.adapt import adapt_folder

        if prompt_set is None:
            from .uses.evaluate import folder_classes

            prompt_set = resolve_prompt_set(labels=folder_classes(Path(examples)))
        text = self.text_classifier(prompt_set)
        return adapt_folder(self.loaded, text, Path(examples), seed=seed, workers=workers, image_cache=image_cache,
                            tower=self.image_tower()).text  # fmt: skip

    def classify(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
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
        max_pixels: int | None = None,
        multi_label: bool = False,
        threshold: float | None = None,
        background: str | None = None,
        calibration: Any = None,
        min_score: float | None = None,
        every: float = 1.0,
        max_frames: int | None = None,
        per_video: bool = False,
        animated_as_video: bool = False,
        max_video_bytes: int | None = None,
    ) -> Iterator[Record]:
        """One record per path (files or folders), in order, as the CLI prints them; a video gives
        one per frame sampled ``every`` seconds (at most ``max_frames``), or one with ``per_video``.

        ``paths`` is one path (a ``str`` or ``os.PathLike``: one input, never its characters) or an
        iterable of them, consumed lazily; anything else is a ``TypeError``. ``-`` is a file name
        here (the library reads no stdin).

        ``text`` is what the images are scored against: a list of labels (``["cat", "dog"]``,
        prompted with the default templates), a prompt pack's name (``"cifar10"``), a
        :class:`PromptSet`, or a text classifier from :meth:`text_classifier` or :meth:`adapt`.

        The keyword arguments are the CLI's options of the same names (``--top-k``, ``--workers``,
        ``--max-bytes``, ``--every``, ``--animated-as-video``, ...), checked by the same definition
        (:mod:`zeroshot.base.options`): a value the CLI refuses raises :class:`UsageError` here, at
        the call. None is an option's default: ``max_bytes`` 512 MiB, ``max_pixels`` 178,956,970,
        ``timeout`` 20 s; 0 means no limit. Videos are capped by ``max_video_bytes``, else by
        ``max_bytes`` when given, else at 64 GiB. Paths may be ``http(s)://`` URLs. ``image_cache`` is
        an :class:`~zeroshot.image.imagecache.ImageEmbeddingCache`; ``calibration`` a
        :class:`~zeroshot.uses.calibration.Calibration` or a path to one. Combinations the CLI
        refuses (``threshold`` without ``multi_label``, ``min_score`` with it) raise here too.
        """
        from .assembly import multi_label_from
        from .base.options import check, video_cap
        from .image import video
        from .image.images import iter_inputs
        from .towers.pipeline import DecodeOptions, ImageEncoder
        from .uses.calibration import resolve_multilabel
        from .uses.output import apply_min_score
        from .uses.records import encoded_records

        opts = check(top_k=top_k, batch_size=batch_size, workers=workers, jpeg_draft=jpeg_draft,
                     max_bytes=max_bytes, timeout=timeout, max_pixels=max_pixels, multi_label=multi_label,
                     threshold=threshold, background=background, min_score=min_score, every=every,
                     max_frames=max_frames, per_video=per_video, animated_as_video=animated_as_video,
                     max_video_bytes=max_video_bytes)  # fmt: skip
        text = self._text_for(text)
        inputs = _input_paths(paths)
        rule = None
        wanted = multi_label_from(multi_label, threshold, background, calibration, min_score)
        if wanted is not None:
            rule = resolve_multilabel(
                self.spec, text.prompt_set, lambda: self.loaded, threshold=wanted.threshold,
                background=wanted.background, calibration=wanted.calibration,
            )  # fmt: skip
        from .base.options import DEFAULT_MAX_BYTES

        options = DecodeOptions(workers=workers, decoder=decoder, jpeg_draft=jpeg_draft,
                                max_bytes=DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
                                max_pixels=opts["max_pixels"], timeout=opts["timeout"])  # fmt: skip
        cap, cap_option = video_cap(max_bytes, max_video_bytes)
        frames = video.VideoOptions(every=every, max_frames=max_frames, animated=animated_as_video, max_bytes=cap,
                                    cap_option=cap_option, max_pixels=options.max_pixels,
                                    timeout=options.timeout)  # fmt: skip
        encoder = ImageEncoder(self.image_tower(), batch_size=batch_size, image_cache=image_cache, options=options)
        batches = encoder.batches(video.expand(iter_inputs(inputs), frames))
        if per_video:
            from .uses.clips import video_record_batches

            scale = self.loaded.logit_scale
            made = video_record_batches(batches, text.weights, scale, text.classes, top_k, rule, every)
            records: Iterator[Record] = (r for batch in made for r in batch)
        else:
            records = encoded_records(batches, text.weights, self.loaded.logit_scale, text.classes, top_k, rule)
        return (apply_min_score(record, min_score) for record in records)

    def _text_for(self, text: Any) -> Any:
        """:meth:`classify`'s ``text`` as a text classifier (see there for what it may be)."""
        if hasattr(text, "weights") and hasattr(text, "classes"):  # a TextClassifier (or one adapted)
            return text
        if isinstance(text, PromptSet):
            return self.text_classifier(text)
        if isinstance(text, str):
            return self.text_classifier(resolve_prompt_set(dataset=text))
        if isinstance(text, bytes | os.PathLike) or text is None:
            raise TypeError(
                "text must be labels (a list of strings), a prompt pack's name, a PromptSet or a text classifier, "
                f"not {type(text).__name__}"
            )
        try:
            labels = list(text)
        except TypeError:
            raise TypeError(
                "text must be labels (a list of strings), a prompt pack's name, a PromptSet or a text classifier, "
                f"not {type(text).__name__}"
            ) from None
        bad = [x for x in labels if not isinstance(x, str)]
        if bad:
            raise TypeError(f"each label must be a string, not {type(bad[0]).__name__}: {bad[0]!r}")
        return self.text_classifier(resolve_prompt_set(labels=labels))


def _input_paths(paths: Any) -> Iterator[str]:
    """``classify``'s inputs as path strings: one path alone, or each of an iterable's (checked as
    they come). A string is one path: iterating it would make an input of each character, and
    ``/`` among them would walk the whole filesystem. A wrong type raises here, at the call."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        return iter([os.fsdecode(paths)])
    try:
        items = iter(paths)
    except TypeError:
        raise TypeError(f"paths must be a path or an iterable of paths, not {type(paths).__name__}") from None

    def checked() -> Iterator[str]:
        for item in items:
            if not isinstance(item, (str, bytes, os.PathLike)):
                raise TypeError(f"each of paths must be a str or os.PathLike, not {type(item).__name__}: {item!r}")
            yield os.fsdecode(item)

    return checked()
