"""zeroshot: CLIP zero-shot image classification with cached prompt ensembles.

Library use, without the CLI::

    import zeroshot

    clf = zeroshot.Zeroshot(model="ViT-B-32", pretrained="openai")
    for record in clf.classify(["photo.jpg"], ["cat", "dog"]):
        print(record["label"], record["score"])

The text side can also be a prompt pack's name (``clf.classify(paths, "cifar10")``), a
:class:`PromptSet`, or a text classifier made once and reused (``clf.text_classifier(...)``); or
the CLI's options by name (``clf.classify(images, labels=["cat", "dog"])``, ``dataset="cifar10"``).
Images may be held in memory (a PIL image, a file's bytes, a numpy array) as well as paths, and
``clf.embed_images(...)`` / ``clf.embed_texts(...)`` give the unit embeddings search is built on.

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
    "Client",
    "ModelLoadError",
    "PromptError",
    "PromptSet",
    "ServerError",
    "UsageError",
    "Zeroshot",
    "ZeroshotError",
    "__version__",
    "load_pack",
    "resolve_prompt_set",
]


def __getattr__(name: str) -> Any:
    """``zeroshot.Client`` and ``zeroshot.ServerError`` (a ``zeroshot serve``'s client), imported
    when first asked for: ``import zeroshot`` stays without http.client and its email parsers."""
    if name in ("Client", "ServerError"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'zeroshot' has no attribute {name!r}")


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
        images: Any,
        text: Any = None,
        *,
        labels: Iterable[str] | None = None,
        dataset: str | None = None,
        templates: str | os.PathLike[str] | Iterable[str] | None = None,
        labels_file: str | os.PathLike[str] | None = None,
        names: Iterable[str | None] | None = None,
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
        """One record per image (a file, or one held in memory; a folder gives one per file in it),
        in order, as the CLI prints them; a video gives one per frame sampled ``every`` seconds (at
        most ``max_frames``), or one with ``per_video``.

        ``images`` is one image or an iterable of them, consumed lazily; anything else is a
        ``TypeError``. An image is a path (a ``str`` or ``os.PathLike``: one input, never its
        characters; ``-`` is a file name here, the library reads no stdin; ``http(s)://`` URLs are
        fetched), or one held in memory: a file's encoded bytes (``bytes``, ``bytearray``,
        ``memoryview``), a PIL image, or a uint8 numpy array (HxW grey, HxWx3 RGB, HxWx4 RGBA). In-memory
        images get the caps files get (``max_bytes`` on bytes, ``max_pixels``) and the same decoding,
        so a file's bytes give the file's record; their record's ``path`` is ``names[i]`` when given,
        else ``image-N`` (``i``, ``N``: the image's index in ``images``). A bad one is its error record.

        What the images are scored against, one way: ``text``, a list of labels (``["cat", "dog"]``,
        prompted with the default templates), a prompt pack's name (``"cifar10"``), a
        :class:`PromptSet`, or a text classifier from :meth:`text_classifier` or :meth:`adapt`; or the
        CLI's ``--label``/``--labels``/``--dataset``/``--templates`` as ``labels`` (a list of names, the
        Hugging Face pipeline's ``candidate_labels``), ``labels_file``, ``dataset`` (a pack's name:
        its classes, or with ``labels`` its templates over those) and ``templates`` (a YAML file's
        path, as ``--templates``, or the templates themselves as a list of strings with ``{label}``).

        The other keyword arguments are the CLI's options of the same names (``--top-k``,
        ``--workers``, ``--max-bytes``, ``--every``, ``--animated-as-video``, ...), checked by the
        same definition (:mod:`zeroshot.base.options`): a value the CLI refuses raises
        :class:`UsageError` here, at the call. None is an option's default: ``max_bytes`` 512 MiB,
        ``max_pixels`` 178,956,970, ``timeout`` 20 s; 0 means no limit. Videos (paths only) are capped
        by ``max_video_bytes``, else by ``max_bytes`` when given, else at 64 GiB. ``image_cache`` is
        an :class:`~zeroshot.image.imagecache.ImageEmbeddingCache` (files and encoded bytes are kept
        by content; PIL images and arrays are never stored); ``calibration`` a
        :class:`~zeroshot.uses.calibration.Calibration` or a path to one. Combinations the CLI
        refuses (``threshold`` without ``multi_label``, ``min_score`` with it) raise here too.
        """
        from .assembly import multi_label_from
        from .base.options import check
        from .uses.calibration import resolve_multilabel
        from .uses.output import apply_min_score
        from .uses.records import encoded_records

        opts = check(top_k=top_k, batch_size=batch_size, workers=workers, jpeg_draft=jpeg_draft,
                     max_bytes=max_bytes, timeout=timeout, max_pixels=max_pixels, multi_label=multi_label,
                     threshold=threshold, background=background, min_score=min_score, every=every,
                     max_frames=max_frames, per_video=per_video, animated_as_video=animated_as_video,
                     max_video_bytes=max_video_bytes)  # fmt: skip
        text = self._text_for(text, labels=labels, dataset=dataset, templates=templates, labels_file=labels_file)
        inputs = _image_inputs(images, names)
        rule = None
        wanted = multi_label_from(multi_label, threshold, background, calibration, min_score)
        if wanted is not None:
            rule = resolve_multilabel(
                self.spec, text.prompt_set, lambda: self.loaded, threshold=wanted.threshold,
                background=wanted.background, calibration=wanted.calibration,
            )  # fmt: skip
        batches = self._batches(inputs, batch_size=batch_size, workers=workers, decoder=decoder, jpeg_draft=jpeg_draft,
                                max_bytes=max_bytes, timeout=opts["timeout"], image_cache=image_cache,
                                max_pixels=opts["max_pixels"], every=every, max_frames=max_frames,
                                animated_as_video=animated_as_video, max_video_bytes=max_video_bytes)  # fmt: skip
        if per_video:
            from .uses.clips import video_record_batches

            scale = self.loaded.logit_scale
            made = video_record_batches(batches, text.weights, scale, text.classes, top_k, rule, every)
            records: Iterator[Record] = (r for batch in made for r in batch)
        else:
            records = encoded_records(batches, text.weights, self.loaded.logit_scale, text.classes, top_k, rule)
        return (apply_min_score(record, min_score) for record in records)

    def embed_images(
        self,
        images: Any,
        *,
        names: Iterable[str | None] | None = None,
        batch_size: int = 32,
        workers: int | None = None,
        decoder: str = "auto",
        jpeg_draft: bool = False,
        max_bytes: int | None = None,
        timeout: float | None = None,
        image_cache: Any = None,
        max_pixels: int | None = None,
        every: float = 1.0,
        max_frames: int | None = None,
        animated_as_video: bool = False,
        max_video_bytes: int | None = None,
    ) -> list[dict[str, Any]]:
        """One entry per image, in order, for the same ``images`` (and ``names``) :meth:`classify`
        takes, decoded the same way: ``{"path", "embedding"}`` (a float32 numpy array [D] of unit
        length: the features :meth:`classify` scores, L2-normalized) or ``{"path", "error"}``. A
        video's sampled frames carry ``time`` and ``frame`` as their records do. The options are
        :meth:`classify`'s of the same names."""
        from .base.options import check

        opts = check(batch_size=batch_size, workers=workers, jpeg_draft=jpeg_draft, max_bytes=max_bytes,
                     timeout=timeout, max_pixels=max_pixels, every=every, max_frames=max_frames,
                     animated_as_video=animated_as_video, max_video_bytes=max_video_bytes)  # fmt: skip
        batches = self._batches(_image_inputs(images, names), batch_size=batch_size, workers=workers,
                                decoder=decoder, jpeg_draft=jpeg_draft, max_bytes=max_bytes, timeout=opts["timeout"],
                                image_cache=image_cache, max_pixels=opts["max_pixels"], every=every,
                                max_frames=max_frames, animated_as_video=animated_as_video,
                                max_video_bytes=max_video_bytes)  # fmt: skip
        return [entry for batch in batches for entry in _embedding_entries(batch)]

    def embed_texts(self, texts: Iterable[str]) -> Any:
        """Raw texts (no templates) -> float32 numpy [N, D], each row of unit length: the text tower
        a text classifier is built with (torch, or ONNX Runtime where this model's text side runs
        there). A text longer than the model reads is a :class:`PromptError`."""
        import numpy as np

        from .text.classifier import encode_texts

        if isinstance(texts, str | bytes):
            raise TypeError("texts must be a list of strings, not one string")
        given = list(texts)
        bad = [t for t in given if not isinstance(t, str)]
        if bad:
            raise TypeError(f"each text must be a string, not {type(bad[0]).__name__}: {bad[0]!r}")
        if not given:
            return np.zeros((0, self.loaded.embed_dim), dtype=np.float32)
        engine = self.loaded.text_engine() if self.loaded.text_engine is not None else None
        rows = encode_texts(self.loaded, given, engine=engine)
        return rows.float().cpu().numpy().astype(np.float32, copy=False)

    def _batches(
        self, inputs: Iterator[Any], *, batch_size: int, workers: int | None, decoder: str, jpeg_draft: bool,
        max_bytes: int | None, timeout: float, image_cache: Any, max_pixels: int | None, every: float,
        max_frames: int | None, animated_as_video: bool, max_video_bytes: int | None,
    ) -> Iterator[Any]:  # fmt: skip
        """``classify``'s and ``embed_images``' inputs through the image core: encoded batches. A
        path's videos become their sampled frames; an image in memory is one input as it is."""
        from .base.options import DEFAULT_MAX_BYTES, video_cap
        from .image import video
        from .image.images import iter_inputs
        from .towers.pipeline import DecodeOptions, ImageEncoder

        options = DecodeOptions(workers=workers, decoder=decoder, jpeg_draft=jpeg_draft,
                                max_bytes=DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
                                max_pixels=max_pixels, timeout=timeout)  # fmt: skip
        cap, cap_option = video_cap(max_bytes, max_video_bytes)
        frames = video.VideoOptions(every=every, max_frames=max_frames, animated=animated_as_video, max_bytes=cap,
                                    cap_option=cap_option, max_pixels=options.max_pixels,
                                    timeout=options.timeout)  # fmt: skip

        def expanded() -> Iterator[Any]:
            for item in inputs:
                yield from [item] if not isinstance(item, str) else video.expand(iter_inputs([item]), frames)

        encoder = ImageEncoder(self.image_tower(), batch_size=batch_size, image_cache=image_cache, options=options)
        return encoder.batches(expanded())

    def _text_for(
        self, text: Any, *, labels: Any = None, dataset: str | None = None, templates: Any = None,
        labels_file: Any = None,
    ) -> Any:  # fmt: skip
        """:meth:`classify`'s text side as a text classifier (see there for what it may be)."""
        from .base.options import named

        given = [name for name, value in (("labels", labels), ("labels_file", labels_file), ("dataset", dataset),
                                          ("templates", templates)) if value is not None]  # fmt: skip
        if text is not None and given:
            raise UsageError(
                f"give text or {' / '.join(named(n) for n in given)}, not both: text is the whole text side "
                "(labels, a pack's name, a PromptSet or a text classifier)"
            )
        if text is None and given:
            return self.text_classifier(_prompt_set(labels, labels_file, dataset, templates))
        if hasattr(text, "weights") and hasattr(text, "classes"):  # a TextClassifier (or one adapted)
            return text
        if isinstance(text, PromptSet):
            return self.text_classifier(text)
        if isinstance(text, str):
            return self.text_classifier(resolve_prompt_set(dataset=text))
        wrong = (
            "text must be labels (a list of strings), a prompt pack's name, a PromptSet or a text classifier "
            "(or give labels=, dataset= or labels_file=)"
        )
        if isinstance(text, bytes | os.PathLike) or text is None:
            raise TypeError(f"{wrong}, not {type(text).__name__}")
        try:
            listed = list(text)
        except TypeError:
            raise TypeError(f"{wrong}, not {type(text).__name__}") from None
        bad = [x for x in listed if not isinstance(x, str)]
        if bad:
            raise TypeError(f"each label must be a string, not {type(bad[0]).__name__}: {bad[0]!r}")
        return self.text_classifier(resolve_prompt_set(labels=listed))


def _prompt_set(labels: Any, labels_file: Any, dataset: str | None, templates: Any) -> PromptSet:
    """The CLI's ``--label``/``--labels``/``--dataset``/``--templates`` as the library takes them
    (``labels`` a list of names, ``templates`` a file or a list of templates) -> one prompt set."""
    from .base.options import named
    from .text.promptcheck import validate_templates

    if labels is not None:
        if isinstance(labels, str | bytes):
            raise UsageError(f"{named('labels')} must be a list of labels, not one string: {labels!r}")
        labels = list(labels)
        bad = [x for x in labels if not isinstance(x, str)]
        if bad:
            raise UsageError(f"each of {named('labels')} must be a string, not {type(bad[0]).__name__}: {bad[0]!r}")
    if dataset is not None and not isinstance(dataset, str):
        raise UsageError(f"{named('dataset')} must be a prompt pack's name, not {type(dataset).__name__}")
    template_file = os.fsdecode(templates) if isinstance(templates, str | os.PathLike) else None
    prompt_set = resolve_prompt_set(dataset=dataset, labels_file=labels_file, labels=labels or (),
                                    templates_file=template_file)  # fmt: skip
    if templates is None or template_file is not None:
        return prompt_set
    if isinstance(templates, bytes):
        raise UsageError(f"{named('templates')} must be a file or a list of templates, not bytes")
    listed = validate_templates(list(templates), named("templates"))
    base = "labels" if labels or labels_file is not None else prompt_set.name
    return prompt_set.with_templates(listed, name=f"{base}+templates")


def _image_inputs(images: Any, names: Any = None) -> Iterator[Any]:
    """``classify``'s images as inputs, lazily: a path as its string (expanded later: folders,
    videos), an image in memory as a :class:`~zeroshot.image.images.MemoryInput` named
    ``names[i]`` or ``image-N``. One path or one image alone is one input: iterating a string would
    make an input of each character (and ``/`` among them would walk the whole filesystem), an
    array its rows. A wrong type raises here, at the call (an item of the wrong type, when reached)."""
    from .image.images import MEMORY_KINDS, is_in_memory, memory_input

    listed = None if names is None else list(names)
    if listed is not None and any(n is not None and not isinstance(n, str) for n in listed):
        raise TypeError("names must be strings (or None where an image is a path)")
    if isinstance(images, str | os.PathLike) or is_in_memory(images):
        items: Iterator[Any] = iter([images])
    else:
        try:
            items = iter(images)
        except TypeError:
            raise TypeError(f"images must be an image ({MEMORY_KINDS}) or an iterable of them, "
                            f"not {type(images).__name__}") from None  # fmt: skip
    if listed is not None and hasattr(images, "__len__") and not isinstance(images, str | os.PathLike) \
            and not is_in_memory(images) and len(images) != len(listed):  # fmt: skip
        raise UsageError(f"names has {len(listed)} entries for {len(images)} images")

    def checked() -> Iterator[Any]:
        for i, item in enumerate(items):
            if isinstance(item, str | os.PathLike):
                yield os.fsdecode(item)
            elif is_in_memory(item):
                if listed is not None and i >= len(listed):
                    raise UsageError(f"names has {len(listed)} entries: too few for the images")
                name = listed[i] if listed is not None and listed[i] is not None else f"image-{i}"
                yield memory_input(name, item)
            else:
                raise TypeError(f"each image must be {MEMORY_KINDS}, not {type(item).__name__}: {item!r}"[:300])

    return checked()


def _embedding_entries(batch: list[Any]) -> list[dict[str, Any]]:
    """Encoded inputs -> ``{"path", "embedding"}`` (float32, L2-normalized as scoring normalizes:
    in float64, the same floor on the norm) or ``{"path", "error"}``, in order."""
    import numpy as np

    from .image.video import with_time
    from .uses.records import stacked

    good = [e for e in batch if e.feature is not None]
    rows = iter(())
    if good:
        feats = stacked([e.feature for e in good]).astype(np.float64)
        unit = feats / np.maximum(np.linalg.norm(feats, axis=-1, keepdims=True), 1e-12)
        rows = iter(unit.astype(np.float32))
    entries = [{"path": e.input.path, "embedding": next(rows)} if e.feature is not None
               else {"path": e.input.path, "error": e.error or "unknown error"} for e in batch]  # fmt: skip
    return [with_time(entry, e.input) for entry, e in zip(entries, batch, strict=True)]
