"""Resolve a model + weights spec and load it through open_clip's own factory.

This is the only module that calls open_clip's model factory. It turns ``--model`` and
``--pretrained`` into a :class:`ModelSpec` (cheap: no torch import), gives each spec a *weights
identity* for cache keys, and loads the model with the preprocessing open_clip returns for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base.errors import ModelLoadError, UnknownModelError, UsageError
from ..base.options import named
from .fastload import attach_optional, skip_random_init
from .hub import (
    DownloadReport,
    Tracker,
    cache_only,
    hub_offline,
    hub_reachable,
    in_hub_cache,
    reporting_downloads,
)
from .loadfailure import load_failure, unknown_model
from .preprocessing import file_preprocess, is_default_preprocess
from .weightfiles import CHECKPOINT_SUFFIXES, check_checkpoint_safe, weights_identity

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
HF_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
# The weights files open_clip looks for in a Hub repository whose tag names no file, in its order.
HUB_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

log = logging.getLogger("zeroshot")

# The demo model that ships inside the package (see training/train_fashion_mini.py).
BUNDLED_NAME = "fashion-mini"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_WEIGHTS = BUNDLED_DIR / "fashion-mini.safetensors"
BUNDLED_DESCRIPTION = (
    "zeroshot's own small CLIP, trained on Fashion-MNIST: it knows 10 kinds of clothing "
    "(prompt pack fashion-mnist) and nothing else"
)
_registered = False


def register_bundled() -> None:
    """Make open_clip's factory know the bundled config, so it builds the model like any other."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(BUNDLED_DIR)
        _registered = True


@dataclass(frozen=True)
class ModelSpec:
    """What to load: an open_clip model name and where its weights come from.

    ``kind`` is ``"tag"`` (an open_clip pretrained tag), ``"file"`` (a local checkpoint),
    ``"hf-hub"`` or ``"local-dir"`` (open_clip schemas that carry their own config and weights).
    """

    model: str
    pretrained: str | None
    kind: str
    # For a checkpoint file: the pretrained tag whose preprocessing it follows (``--preprocess``);
    # None lets :func:`file_preprocess` infer it from the architecture's tags.
    preprocess: str | None = None

    @property
    def label(self) -> str:
        return model_label(self.model, self.pretrained)

    def matches(self, model: str, identity: dict[str, Any]) -> bool:
        """Whether this is the model (architecture and weights) that a classifier or calibration file
        records as ``model`` and ``identity`` (:func:`weights_identity`)."""
        from ..base import cache

        return self.model == model and weights_identity(self, cache.hash_memo_dir()) == identity


def model_label(model: str, pretrained: str | None) -> str:
    """How messages name a model: ``ViT-B-32 (openai)``."""
    return model if pretrained is None else f"{model} ({pretrained})"


def spec_built_for(model: str, pretrained: str | None, preprocess: str | None = None) -> ModelSpec:
    """The model an exported classifier names (its ``model`` and ``pretrained``), found on this
    machine: the bundled model's weights wherever this install keeps them, not the path recorded
    where the classifier was built."""
    if model == BUNDLED_NAME:
        return resolve_spec(BUNDLED_NAME, None, preprocess)
    return resolve_spec(model, pretrained, preprocess)


def resolve_spec(model: str | None = None, pretrained: str | None = None, preprocess: str | None = None) -> ModelSpec:
    """Apply defaults (``ZEROSHOT_MODEL``/``ZEROSHOT_PRETRAINED``) and classify the weights source.

    ``preprocess`` (``--preprocess TAG``) applies to checkpoint files only: see :func:`file_preprocess`.
    """
    spec = _resolve_spec(model, pretrained)
    if preprocess:
        if spec.model == BUNDLED_NAME:
            raise UsageError(
                f"{named('preprocess')} does not apply to {BUNDLED_NAME}: zeroshot's bundled model has its own"
            )
        if spec.kind != "file":
            raise UsageError(
                f"{named('preprocess', preprocess)} applies to a checkpoint file ({named('pretrained')} FILE); "
                f"{spec.label} brings its own preprocessing"
            )
        return ModelSpec(spec.model, spec.pretrained, spec.kind, preprocess.strip())
    return spec


def _resolve_spec(model: str | None, pretrained: str | None) -> ModelSpec:
    env_model = os.environ.get("ZEROSHOT_MODEL") or None
    env_pretrained = os.environ.get("ZEROSHOT_PRETRAINED") or None
    name = (model or env_model or DEFAULT_MODEL).strip()
    if not name:
        raise UsageError(f"{named('model')} is empty")
    if name.startswith((HF_PREFIX, LOCAL_DIR_PREFIX)):
        if pretrained:
            raise UsageError(f"{named('pretrained')} does not apply to '{name}': that model brings its own weights")
        kind = "hf-hub" if name.startswith(HF_PREFIX) else "local-dir"
        ident = name.split(":", 1)[1].strip()
        if not ident:
            raise UsageError(f"'{name}' names no repository or folder")
        if kind == "local-dir" and not Path(ident).is_dir():
            raise UnknownModelError(f"model folder not found: {ident}")
        return ModelSpec(name, None, kind)
    weights = pretrained or (env_pretrained if model is None or env_model == model else None)
    if name == BUNDLED_NAME:
        if weights is None:
            return ModelSpec(name, str(BUNDLED_WEIGHTS), "file")
        if not looks_like_path(weights):
            raise UsageError(
                f"{BUNDLED_NAME} is zeroshot's bundled model: it brings its own weights and takes no "
                f"{named('pretrained')} tag ('{weights}'); drop {named('pretrained')}, or pass a checkpoint file of "
                "its architecture"
            )
    if weights is None:
        weights = _default_tag(name)
    if looks_like_path(weights):
        if not Path(weights).is_file():
            raise UnknownModelError(
                f"checkpoint file not found: {weights} (pass an existing file, or an open_clip tag such as "
                f"'{DEFAULT_PRETRAINED}')"
            )
        return ModelSpec(name, weights, "file")
    return ModelSpec(name, weights, "tag")


def looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or (os.altsep is not None and os.altsep in value)
        or value.lower().endswith(CHECKPOINT_SUFFIXES)
        or Path(value).is_file()
    )


def _default_tag(name: str) -> str:
    """The default weights for an architecture given without --pretrained."""
    if name == DEFAULT_MODEL:  # it has them: no need to import open_clip to ask
        return DEFAULT_PRETRAINED
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    if not tags or DEFAULT_PRETRAINED in tags:
        # No known tags: let the load report the unknown model or the missing weights.
        return DEFAULT_PRETRAINED
    raise UsageError(
        f"{name} has no '{DEFAULT_PRETRAINED}' weights; pass {named('pretrained')} with one of: {', '.join(tags)} "
        "(or a checkpoint file)"
    )


# --- loading ----------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """An open_clip model ready for inference, with its own preprocessing and tokenizer."""

    spec: ModelSpec
    model: Any
    preprocess: Callable[[Any], Any]
    tokenizer: Any
    device: Any
    notes: list[str] = field(default_factory=list)
    precision: str = "fp32"
    timings: dict[str, float] = field(default_factory=dict)  # seconds: "import" (open_clip, torch), "load"
    # With the ONNX runtime: a callable giving the text tower in ONNX Runtime (None when it stays on
    # torch), called when a text classifier is built (zeroshot.text.classifier.encode_prompt_set).
    text_engine: Callable[[], Any] | None = None

    @property
    def input_dtype(self) -> Any:
        """The dtype image batches must have for this model's image tower."""
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)

    @property
    def logit_scale(self) -> float:
        """The learned temperature, ``logit_scale.exp()`` (100 for OpenAI/LAION CLIP)."""
        return float(self.model.logit_scale.detach().exp().float().item())

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if proj is not None and hasattr(proj, "shape"):
            return int(proj.shape[-1])
        import torch

        with torch.inference_mode():
            tokens = self.tokenizer(["a"]).to(self.device)
            return int(self.model.encode_text(tokens).shape[-1])


def hf_text_repo(name: str) -> str | None:
    """The Hugging Face repository of the architecture's tokenizer or text tower, if it has one
    (such models need ``transformers``)."""
    import open_clip

    text = (open_clip.get_model_config(name.replace("/", "-")) or {}).get("text_cfg", {})
    return text.get("hf_tokenizer_name") or text.get("hf_model_name") or None


def uses_timm(name: str) -> bool:
    """Whether the architecture's image tower is a timm model (such models need ``timm``)."""
    import open_clip

    return bool((open_clip.get_model_config(name.replace("/", "-")) or {}).get("vision_cfg", {}).get("timm_model_name"))


def _factory_arguments(
    spec: ModelSpec, open_clip: Any
) -> tuple[dict[str, Any], list[str], bool, tuple[str, tuple[str, ...]]]:
    """What open_clip's factory is given for ``spec`` (QuickGELU to match a tag's weights, a checkpoint
    file's preprocessing), the notes that say so, whether the weights come from the Hugging Face Hub
    and, if so, its repository and the weights' file names. Unknown models and tags, and unsafe
    checkpoint files, are refused here, before anything is built."""
    kwargs: dict[str, Any] = {}
    notes: list[str] = []
    from_hub = False
    hub_files: tuple[str, tuple[str, ...]] = ("", ())  # a Hub model's repository and its weights' names
    if spec.kind == "tag":
        assert spec.pretrained is not None
        name = spec.model.replace("/", "-")
        if open_clip.get_model_config(name) is None:
            raise unknown_model(spec.model)
        cfg = open_clip.get_pretrained_cfg(name, spec.pretrained)
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            if not tags:
                raise UnknownModelError(
                    f"{spec.model} has no pretrained tags in open_clip ('{spec.pretrained}' asked for): pass a "
                    f"checkpoint file with {named('pretrained')} FILE"
                )
            raise UnknownModelError(
                f"unknown pretrained tag '{spec.pretrained}' for {spec.model}; known tags: {', '.join(tags)} "
                f"(or pass a checkpoint file with {named('pretrained')} FILE)"
            )
        # Weights trained with QuickGELU (OpenAI's) must run with it; open_clip only warns when the
        # config disagrees, which silently costs accuracy. Use the activation the weights expect.
        if cfg.get("quick_gelu", False) and not open_clip.get_model_config(name).get("quick_gelu", False):
            kwargs["force_quick_gelu"] = True
            notes.append("QuickGELU enabled to match the pretrained weights")
        from_hub = bool(cfg.get("hf_hub"))
        repo, filename = os.path.split(str(cfg.get("hf_hub") or ""))  # as open_clip splits it
        hub_files = (repo, (filename,) if filename else HUB_WEIGHT_NAMES)
    elif spec.kind == "file":
        assert spec.pretrained is not None
        if open_clip.get_model_config(spec.model.replace("/", "-")) is None:
            raise unknown_model(spec.model)
        check_checkpoint_safe(spec.pretrained)
        if spec.model != BUNDLED_NAME:
            cfg, why = file_preprocess(spec.model.replace("/", "-"), spec.preprocess)
            for key in ("mean", "std", "interpolation", "resize_mode"):
                if cfg and key in cfg:
                    kwargs[f"image_{key}"] = cfg[key]
            if spec.preprocess or not is_default_preprocess(cfg):  # say so when it is not the usual
                notes.append(f"{spec.model} from a checkpoint file: {why}")
    elif spec.kind == "local-dir":
        folder = Path(spec.model.split(":", 1)[1])
        for p in folder.iterdir():
            if p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
                check_checkpoint_safe(p)
    elif spec.kind == "hf-hub":
        from_hub = True
        hub_files = (spec.model[len(HF_PREFIX) :], ("open_clip_config.json",))
    return kwargs, notes, from_hub, hub_files


def load_model(
    spec: ModelSpec, device: str = "cpu", precision: str = "fp32", downloads: DownloadReport | None = None
) -> LoadedModel:
    """Build the model with open_clip's factory and load its weights; never random weights.

    The preprocessing is the inference transform open_clip returns for this model and checkpoint.
    ``precision`` is passed to open_clip (fp16/bf16 weights; its LayerNorms keep fp32 maths).
    ``downloads`` hears about each file fetched from the Hugging Face Hub (:class:`DownloadReport`).
    """
    import time

    began = time.perf_counter()
    import open_clip

    imported = time.perf_counter()
    register_bundled()
    unreachable = False
    user_offline = hub_offline()  # HF_HUB_OFFLINE set before we could set it ourselves
    kwargs, notes, from_hub, hub_files = _factory_arguments(spec, open_clip)

    tracker = Tracker(downloads)

    def build() -> tuple[Any, Any, Any]:
        with reporting_downloads(tracker), skip_random_init():
            model, preprocess = open_clip.create_model_from_pretrained(
                spec.model, pretrained=spec.pretrained, device=device, precision=precision, **kwargs
            )
            return model, preprocess, open_clip.get_tokenizer(spec.model)

    try:
        if spec.kind in ("hf-hub", "local-dir"):  # a config only the download tells
            attach_optional()
        else:
            attach_optional(transformers=bool(hf_text_repo(spec.model)), timm=uses_timm(spec.model))
        built = None
        if from_hub and not hub_offline():
            # From the local Hugging Face cache first, asking the Hub nothing; only when something
            # is missing there, check that the Hub can be reached (no minute of retries when it
            # cannot) and fetch it. When the weights are plainly not in the cache, the cache-only try
            # is skipped: a first download would build the model twice.
            if in_hub_cache(*hub_files):
                try:
                    with cache_only():
                        built = build()
                except (ModelLoadError, UsageError):
                    raise
                except Exception:
                    pass
            if built is None:
                unreachable = not hub_reachable()
        if built is None:
            # No Hub: files come from the local cache or fail at once, instead of a minute of retries
            # (transformers' tokenizers too: open_clip #968); offline for this load only.
            with cache_only() if unreachable else contextlib.nullcontext():
                built = build()
        model, preprocess, tokenizer = built
    except (ModelLoadError, UsageError):
        raise
    except Exception as e:
        raise load_failure(spec, e, user_offline=user_offline, unreachable=unreachable, broken=tracker.broken) from None
    model.eval()
    timings = {"import": round(imported - began, 4), "load": round(time.perf_counter() - imported, 4)}
    return LoadedModel(
        spec=spec, model=model, preprocess=preprocess, tokenizer=tokenizer, device=device, notes=notes,
        precision=precision, timings=timings,
    )  # fmt: skip
