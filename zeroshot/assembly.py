"""One assembly: model spec -> loaded model -> text classifier -> multi-label rule.

``classify`` (local and Ray), ``build-prompts``, ``eval`` and the public :class:`zeroshot.Zeroshot`
all get what they run from :func:`prepare`, so the library is what the CLI calls and the two cannot
drift. What a person sees while it happens (a spinner, download bars, notes) comes in through
:class:`Loading`; the library's default shows nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .base.errors import ModelLoadError, UnknownModelError

if TYPE_CHECKING:
    from .model.models import DownloadReport, LoadedModel, ModelSpec
    from .text.classifier import TextClassifier
    from .text.prompts import PromptSet
    from .uses.export import ClassifierFile
    from .uses.ranking import MultiLabel as MultiLabelRule


@dataclass(frozen=True)
class ModelChoice:
    """Which model to run and how: ``--model``, ``--pretrained``, ``--preprocess``, ``--device``, ``--precision``."""

    model: str | None = None
    pretrained: str | None = None
    preprocess: str | None = None
    device: str = "auto"
    precision: str = "auto"
    runtime: str | None = None  # --runtime auto/torch/onnx (None: ZEROSHOT_RUNTIME, else auto)


@dataclass(frozen=True)
class MultiLabel:
    """``--multi-label`` (with ``--threshold``, ``--background``, ``--calibration``: a path or a
    :class:`~zeroshot.uses.calibration.Calibration`)."""

    threshold: float = 0.5
    background: str | None = None  # None: the default neutral word
    calibration: Any = None


def multi_label_from(
    wanted: bool,
    threshold: float | None = None,
    background: str | None = None,
    calibration: Any = None,
    min_score: float | None = None,
) -> MultiLabel | None:
    """The multi-label options a run was given (``--multi-label``, or ``--calibration``, which implies
    it), or None; options that would be silently ignored are a :class:`UsageError` instead:
    ``--threshold``/``--background`` without ``--multi-label``, ``--background`` with a calibration
    (whose fitted a and b decide), ``--min-score`` with ``--multi-label`` (the threshold decides
    which labels are present; a second cut-off would leave ``label`` null beside present ``labels``)."""
    from .base.errors import UsageError
    from .base.options import named

    wanted = wanted or calibration is not None
    if not wanted:
        given = [named(name) for name, v in (("threshold", threshold), ("background", background)) if v is not None]
        if given:
            raise UsageError(
                f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} only with {named('multi_label')} "
                f"(or {named('calibration')})"
            )
        return None
    if min_score is not None:
        raise UsageError(
            f"{named('min_score')} is for single-label runs; with {named('multi_label')}, {named('threshold')} "
            "decides which labels are present"
        )
    if background is not None:
        if not background.strip():
            raise UsageError(f"{named('background')} is empty")
        if calibration is not None:
            raise UsageError(
                f"{named('background')} is not used with {named('calibration')}: the calibration's fitted a and b "
                "decide"
            )
    return MultiLabel(0.5 if threshold is None else threshold, background.strip() if background else None, calibration)


class Loading:
    """What the caller shows while a model loads; the library's default shows nothing."""

    @contextlib.contextmanager
    def model(self, spec: ModelSpec, device: str, precision: str) -> Iterator[DownloadReport | None]:
        """Around one model load; yields who hears about the files downloaded on the way."""
        yield None

    def notes(self, notes: list[str]) -> None:
        """What loading inferred (a checkpoint file's preprocessing, QuickGELU)."""

    @contextlib.contextmanager
    def engine(self, spec: ModelSpec, precision: str) -> Iterator[None]:
        """Around the one-time export of the model's image tower for ONNX Runtime (seconds)."""
        yield

    def prompts(self, total: int) -> Callable[[int], None] | None:
        """Who hears how many more prompts were encoded, out of ``total``, while a text classifier is
        built (None: nobody)."""
        return None


@dataclass
class Prepared:
    """What a run needs. The model itself loads on first use of :attr:`loaded` when :func:`prepare`
    could do without it (a cached text classifier and ``eager=False``)."""

    spec: ModelSpec
    device: str
    precision: str
    text: TextClassifier
    rule: MultiLabelRule | None
    load: Callable[[], LoadedModel] = field(repr=False)

    box: list[LoadedModel] = field(default_factory=list, repr=False)  # the model, once loaded
    runtime: str = "torch"  # where the image tower runs: "torch" or "onnx" (see image_tower)
    loading: Loading = field(default_factory=Loading, repr=False)
    towers: list[Any] = field(default_factory=list, repr=False)  # the image tower, once made

    @property
    def loaded(self) -> LoadedModel:
        return self.load()

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature: from the text classifier's scoring facts when it has
        them (no model needed), else from the model."""
        facts = self.text.scoring
        return float(facts["logit_scale"]) if facts is not None else self.loaded.logit_scale

    def image_tower(self, decode_workers: int = 1) -> Any:
        """The image tower this run's images go through (:mod:`zeroshot.towers.runtimes`), made once.

        With the ONNX runtime: the cached export, opened without loading the model (nor importing
        torch) when the text classifier's scoring facts name the model's image key; else the model
        loads and its tower is exported, once. A tower that cannot run there runs on torch, with a
        note naming the reason.
        """
        if not self.towers:
            facts = self.text.scoring
            self.towers.append(
                make_tower(
                    self.runtime,
                    self.precision,
                    self.load,
                    self.loading,
                    decode_workers,
                    image_key=facts["image_key"] if facts is not None else None,
                )  # fmt: skip
            )
        return self.towers[0]

    def embeddings_key(self) -> str:
        """The image-embedding cache key of this run's features: the model's, and the runtime's when
        it is not torch (:func:`zeroshot.towers.onnxexport.runtime_image_key`)."""
        from .towers.onnxexport import read_engine, runtime_image_key

        facts = self.text.scoring
        if facts is not None:
            base = facts["image_key"]
        else:
            from .model.weightfiles import image_cache_key

            base = image_cache_key(self.loaded)
        runtime = self.towers[0].runtime if self.towers else self.runtime
        if runtime == "onnx" and isinstance(read_engine(base, self.precision), str):
            runtime = "torch"  # its export was rejected: the features will be torch's
        return runtime_image_key(base, runtime, self.precision)

    @property
    def is_loaded(self) -> bool:
        return bool(self.box)

    @property
    def loaded_if_any(self) -> LoadedModel | None:
        """The model if something loaded it, without loading it."""
        return self.box[0] if self.box else None


def text_engine_for(loaded: LoadedModel, loading: Loading) -> Callable[[], Any]:
    """The text tower in ONNX Runtime for ``loaded``, made (exported, or read from the cache) the
    first time a text classifier is built, not before: a cached classifier needs none."""
    made: list[Any] = []

    def engine() -> Any:
        if not made:
            from .towers.onnxtext import text_engine

            made.append(text_engine(loaded, loading))
        return made[0]

    return engine


def make_tower(
    runtime: str,
    precision: str,
    load: Callable[[], LoadedModel],
    loading: Loading,
    decode_workers: int = 1,
    *,
    image_key: str | None = None,
) -> Any:
    """The image tower for ``runtime``: torch's (the loaded model), or ONNX Runtime's: the cached
    export of the model whose image key is ``image_key`` (no model load, no torch), else exported
    from the loaded model once; a model that cannot run there runs on torch, with a note."""
    from .towers.runtimes import TorchTower, onnx_threads

    if runtime == "onnx":
        from .towers.onnxexport import cached_tower, tower_for

        threads = onnx_threads(decode_workers)
        tower = cached_tower(image_key, precision, threads) if image_key is not None else None
        if tower is not None:
            return tower
        loaded = load()
        tower, why = tower_for(loaded, precision, threads=threads, loading=loading)
        if tower is not None:
            return tower
        loading.notes([f"{loaded.spec.label} runs on torch, not ONNX Runtime: {why}"])
    return TorchTower(load())


class _Deferred:
    """A progress callback made on its first call (a cache hit makes none, so shows nothing)."""

    def __init__(self, make: Callable[[], Callable[[int], None] | None]) -> None:
        self.make, self.made = make, False
        self.fn: Callable[[int], None] | None = None

    def __call__(self, n: int) -> None:
        if not self.made:
            self.made, self.fn = True, self.make()
        if self.fn is not None:
            self.fn(n)


def spec_for(choice: ModelChoice, file: ClassifierFile | None = None) -> ModelSpec:
    """The model to run: the choice's, else a classifier file's own; a file is checked against it
    before anything loads (a wrong model fails fast)."""
    from .model.models import resolve_spec, spec_built_for
    from .uses.export import check_model

    if file is None:
        return resolve_spec(choice.model, choice.pretrained, choice.preprocess)
    if choice.model is None and choice.pretrained is None:
        try:
            spec = spec_built_for(file.model, file.pretrained, choice.preprocess)
        except (ModelLoadError, UnknownModelError) as e:
            raise type(e)(
                f"{e} (the model classifier file {file.path} was built with; pass --model/--pretrained)"
            ) from None
    else:
        spec = resolve_spec(choice.model, choice.pretrained, choice.preprocess)
    check_model(file, spec)
    return spec


def prepare_model(choice: ModelChoice, loading: Loading | None = None) -> LoadedModel:
    """Just the model (:class:`zeroshot.Zeroshot`, which takes prompt sets one at a time)."""
    from .model.devices import resolve_device, resolve_precision

    device = resolve_device(choice.device)
    return _load(spec_for(choice), device, model_precision(resolve_precision(choice.precision, device)),
                 loading or Loading())  # fmt: skip


def model_precision(precision: str) -> str:
    """The precision the torch model loads at: int8 is the ONNX image tower's alone (from fp32)."""
    return "fp32" if precision == "int8" else precision


def _load(spec: ModelSpec, device: str, precision: str, loading: Loading) -> LoadedModel:
    from .model.models import load_model

    with loading.model(spec, device, precision) as downloads:
        loaded = load_model(spec, device, precision, downloads=downloads)
    loading.notes(loaded.notes)
    return loaded


def prepare(
    choice: ModelChoice,
    prompt_set: PromptSet | None = None,
    *,
    classifier_file: ClassifierFile | None = None,
    multi_label: MultiLabel | None = None,
    use_cache: bool = True,
    refresh: bool = False,
    eager: bool = True,
    batch_size: int = 256,
    loading: Loading | None = None,
    loaded: LoadedModel | None = None,
) -> Prepared:
    """Resolve the model, its device and precision, the text classifier (from ``classifier_file``,
    the cache, or built) and the multi-label rule. ``eager`` loads the model now (it is needed
    to classify images); otherwise only when the text classifier or the rule needs it. ``refresh``
    rebuilds a cached text classifier."""
    from .model.devices import resolve_device, resolve_precision
    from .text.classifier import get_text_classifier
    from .towers.runtimes import resolve_runtime, text_runtime
    from .uses.calibration import resolve_multilabel

    if (prompt_set is None) == (classifier_file is None):
        raise ValueError("prepare needs a prompt set or a classifier file, not both")
    loading = loading or Loading()
    spec = spec_for(choice, classifier_file)
    device = resolve_device(choice.device)
    precision = resolve_precision(choice.precision, device)
    runtime = resolve_runtime(choice.runtime, device, precision)
    loads_at = model_precision(precision)  # the torch model's (and the text tower's) precision
    box: list[LoadedModel] = [] if loaded is None else [loaded]  # a model already loaded for this choice

    def load() -> LoadedModel:
        if not box:
            box.append(_load(spec, device, loads_at, loading))
            if text_runtime(choice.runtime, runtime) == "onnx":
                box[0].text_engine = text_engine_for(box[0], loading)
        return box[0]

    if eager:
        load()
    if classifier_file is not None:
        from .uses.export import check_model

        if box:
            check_model(classifier_file, spec, box[0].embed_dim)
        text = classifier_file.text_classifier()
    else:
        assert prompt_set is not None
        text = get_text_classifier(
            spec, prompt_set, load, use_cache=use_cache, precision=loads_at, batch_size=batch_size,
            refresh=refresh, progress=_Deferred(lambda: loading.prompts(prompt_set.prompt_count())),
        )  # fmt: skip
    rule = None
    if multi_label is not None:
        rule = resolve_multilabel(
            spec, text.prompt_set, load, threshold=multi_label.threshold, background=multi_label.background,
            calibration=multi_label.calibration,
        )  # fmt: skip
    return Prepared(spec=spec, device=device, precision=precision, text=text, rule=rule, load=load, box=box,
                    runtime=runtime, loading=loading)  # fmt: skip
