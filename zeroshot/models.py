"""Resolve a model + weights spec and load it through open_clip's own factory.

This is the only module that calls open_clip's model factory. It turns ``--model`` and
``--pretrained`` into a :class:`ModelSpec` (cheap: no torch import), gives each spec a *weights
identity* for cache keys, and loads the model with the preprocessing open_clip returns for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, UnsafeCheckpointError, UsageError

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
HF_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz", ".npy")
# Suffixes open_clip loads without pickle (safetensors, numpy with allow_pickle=False).
NON_PICKLE_SUFFIXES = (".safetensors", ".npz", ".npy")

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

    @property
    def label(self) -> str:
        return model_label(self.model, self.pretrained)

    def matches(self, model: str, identity: dict[str, Any]) -> bool:
        """Whether this is the model (architecture and weights) that a classifier or calibration file
        records as ``model`` and ``identity`` (:func:`weights_identity`)."""
        from . import cache

        return self.model == model and weights_identity(self, cache.hash_memo_dir()) == identity


def model_label(model: str, pretrained: str | None) -> str:
    """How messages name a model: ``ViT-B-32 (openai)``."""
    return model if pretrained is None else f"{model} ({pretrained})"


def spec_built_for(model: str, pretrained: str | None) -> ModelSpec:
    """The model an exported classifier names (its ``model`` and ``pretrained``), found on this
    machine: the bundled model's weights wherever this install keeps them, not the path recorded
    where the classifier was built."""
    if model == BUNDLED_NAME:
        return resolve_spec(BUNDLED_NAME)
    return resolve_spec(model, pretrained)


def resolve_spec(model: str | None = None, pretrained: str | None = None) -> ModelSpec:
    """Apply defaults (``ZEROSHOT_MODEL``/``ZEROSHOT_PRETRAINED``) and classify the weights source."""
    env_model = os.environ.get("ZEROSHOT_MODEL") or None
    env_pretrained = os.environ.get("ZEROSHOT_PRETRAINED") or None
    name = (model or env_model or DEFAULT_MODEL).strip()
    if not name:
        raise UsageError("--model is empty")
    if name.startswith((HF_PREFIX, LOCAL_DIR_PREFIX)):
        if pretrained:
            raise UsageError(f"--pretrained does not apply to '{name}': that model brings its own weights")
        kind = "hf-hub" if name.startswith(HF_PREFIX) else "local-dir"
        ident = name.split(":", 1)[1].strip()
        if not ident:
            raise UsageError(f"'{name}' names no repository or folder")
        if kind == "local-dir" and not Path(ident).is_dir():
            raise ModelLoadError(f"model folder not found: {ident}")
        return ModelSpec(name, None, kind)
    weights = pretrained or (env_pretrained if model is None or env_model == model else None)
    if weights is None and name == BUNDLED_NAME:
        return ModelSpec(name, str(BUNDLED_WEIGHTS), "file")
    if weights is None:
        weights = _default_tag(name)
    if looks_like_path(weights):
        if not Path(weights).is_file():
            raise ModelLoadError(
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
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    if not tags or DEFAULT_PRETRAINED in tags:
        # No known tags: let the load report the unknown model or the missing weights.
        return DEFAULT_PRETRAINED
    raise UsageError(
        f"{name} has no '{DEFAULT_PRETRAINED}' weights; pass --pretrained with one of: {', '.join(tags)} "
        "(or a checkpoint file)"
    )


# --- weights identity (cache keys) ------------------------------------------------------------


def file_sha256(path: str | Path, memo_dir: Path | None = None) -> str:
    """SHA-256 of a file's content, remembered per (path, size, mtime, inode) under ``memo_dir``."""
    path = Path(path)
    st = path.stat()
    stamp = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
    memo = None
    if memo_dir is not None:
        memo = memo_dir / (hashlib.sha256(stamp.encode("utf-8", "surrogateescape")).hexdigest() + ".sha256")
        with contextlib.suppress(OSError):
            text = memo.read_text().strip()
            if len(text) == 64:
                return text
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    if memo is not None:
        from .cache import atomic_write_bytes

        with contextlib.suppress(OSError):
            atomic_write_bytes(memo, value.encode())
    return value


def weights_identity(spec: ModelSpec, memo_dir: Path | None = None) -> dict[str, Any]:
    """Everything about the weights that changes the numbers, as plain JSON data."""
    if spec.kind == "file":
        assert spec.pretrained is not None
        return {"kind": "file", "sha256": file_sha256(spec.pretrained, memo_dir)}
    if spec.kind == "local-dir":
        folder = Path(spec.model.split(":", 1)[1])
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", *CHECKPOINT_SUFFIXES))
        return {"kind": "local-dir", "files": {p.name: file_sha256(p, memo_dir) for p in files}}
    if spec.kind == "hf-hub":
        # The repository's current revision is what open_clip downloads; pin a revision on the Hub
        # side if you need the cache to notice upstream changes.
        return {"kind": "hf-hub", "id": spec.model.split(":", 1)[1]}
    return {"kind": "tag", "tag": spec.pretrained}


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


PRECISIONS = ("fp32", "fp16", "bf16")


def resolve_precision(precision: str | None, device: str) -> str:
    """``auto`` is fp16 on CUDA and fp32 elsewhere; fp16/bf16 halve memory traffic on GPUs."""
    choice = (precision or "auto").strip().lower()
    if choice == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if choice not in PRECISIONS:
        raise UsageError(f"--precision {precision}: expected auto, {', '.join(PRECISIONS)}")
    return choice


def _no_gpu_driver() -> bool:
    """True when this is Linux without an NVIDIA or ROCm driver: CUDA cannot be there.

    Lets ``--device auto`` settle on the CPU without importing torch (about 2 s), which keeps a
    build-prompts cache hit fast. Anywhere else, torch is asked.
    """
    import glob
    import sys

    if not sys.platform.startswith("linux"):
        return False
    return not (
        os.path.exists("/proc/driver/nvidia/version") or glob.glob("/dev/nvidia*") or os.path.exists("/dev/kfd")
    )


def resolve_device(device: str | None) -> str:
    """``auto`` picks CUDA when present; ``cuda``/``cuda:N`` must exist."""
    choice = (device or "auto").strip().lower()
    if choice == "cpu" or (choice == "auto" and _no_gpu_driver()):
        return "cpu"
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
        if choice != "cuda":
            index = choice.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise UsageError(f"--device {device}: no such GPU (this machine has {torch.cuda.device_count()})")
        return choice
    raise UsageError(f"--device {device}: expected auto, cpu, cuda or cuda:N")


def _hub_host() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]


def _resolves(host: str, timeout: float = 3.0) -> bool:
    """Whether ``host`` resolves within ``timeout`` seconds (getaddrinfo has no timeout of its own)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.getaddrinfo(host, 443)
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _go_offline_if_unreachable() -> bool:
    """Put huggingface_hub in offline mode when its host does not resolve.

    Offline, the hub client still serves files already in its local cache but fails at once for the
    rest, instead of retrying for half a minute. Returns True when the network is unusable.
    """
    with contextlib.suppress(ImportError):
        import huggingface_hub.constants as hf_constants

        if hf_constants.HF_HUB_OFFLINE:
            return True
        if not _resolves(_hub_host()):
            hf_constants.HF_HUB_OFFLINE = True
            return True
    return False


@contextlib.contextmanager
def _quiet_third_party() -> Iterator[None]:
    """open_clip and huggingface_hub log and warn freely while loading; we report failures ourselves."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def check_checkpoint_safe(path: str | Path) -> None:
    """Refuse a pickle checkpoint that holds anything but tensors and plain containers.

    torch's weights-only unpickler never runs code: it raises on any global outside its allow-list.
    open_clip loads with weights_only=True too; checking here first gives a clear error and guards
    against a fallback to the unrestricted unpickler.
    """
    import pickle

    import torch

    path = str(path)
    if path.lower().endswith(NON_PICKLE_SUFFIXES):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e).lower():
                    raise
                torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        text = str(e)
        marker = "WeightsUnpickler error:"
        detail = text.split(marker, 1)[1].split("Check the documentation", 1)[0] if marker in text else ""
        detail = " ".join(detail.split()) or "disallowed content"
        raise UnsafeCheckpointError(
            f"refusing checkpoint {path}: it is a pickle that holds more than tensors, and loading it could "
            f"run code ({detail[:120]}); use a plain state_dict or a .safetensors file"
        ) from None
    except Exception as e:
        raise ModelLoadError(f"cannot read checkpoint {path}: {_first_line(e)}") from None


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_model(spec: ModelSpec, device: str = "cpu", precision: str = "fp32") -> LoadedModel:
    """Build the model with open_clip's factory and load its weights; never random weights.

    The preprocessing is the inference transform open_clip returns for this model and checkpoint.
    ``precision`` is passed to open_clip (fp16/bf16 weights; its LayerNorms keep fp32 maths).
    """
    import open_clip

    register_bundled()
    kwargs: dict[str, Any] = {}
    notes: list[str] = []
    offline = False
    if spec.kind == "tag":
        assert spec.pretrained is not None
        name = spec.model.replace("/", "-")
        if open_clip.get_model_config(name) is None:
            raise _unknown_model(spec.model)
        cfg = open_clip.get_pretrained_cfg(name, spec.pretrained)
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            known = ", ".join(tags) if tags else "none"
            raise ModelLoadError(
                f"unknown pretrained tag '{spec.pretrained}' for {spec.model}; known tags: {known} "
                "(or pass a checkpoint file with --pretrained FILE)"
            )
        # Weights trained with QuickGELU (OpenAI's) must run with it; open_clip only warns when the
        # config disagrees, which silently costs accuracy. Use the activation the weights expect.
        if cfg.get("quick_gelu", False) and not open_clip.get_model_config(name).get("quick_gelu", False):
            kwargs["force_quick_gelu"] = True
            notes.append("QuickGELU enabled to match the pretrained weights")
        if cfg.get("hf_hub"):
            offline = _go_offline_if_unreachable()
    elif spec.kind == "file":
        assert spec.pretrained is not None
        if open_clip.get_model_config(spec.model.replace("/", "-")) is None:
            raise _unknown_model(spec.model)
        check_checkpoint_safe(spec.pretrained)
    elif spec.kind == "local-dir":
        folder = Path(spec.model.split(":", 1)[1])
        for p in folder.iterdir():
            if p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
                check_checkpoint_safe(p)
    elif spec.kind == "hf-hub":
        offline = _go_offline_if_unreachable()

    try:
        with _quiet_third_party():
            model, preprocess = open_clip.create_model_from_pretrained(
                spec.model, pretrained=spec.pretrained, device=device, precision=precision, **kwargs
            )
            tokenizer = open_clip.get_tokenizer(spec.model)
    except (ModelLoadError, UsageError):
        raise
    except Exception as e:
        raise _load_failure(spec, e, offline) from None
    model.eval()
    return LoadedModel(
        spec=spec, model=model, preprocess=preprocess, tokenizer=tokenizer, device=device, notes=notes,
        precision=precision,
    )  # fmt: skip


def _unknown_model(name: str) -> ModelLoadError:
    import difflib

    import open_clip

    close = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ModelLoadError(
        f"unknown model '{name}'{hint}; `zeroshot models` lists the architectures, or use hf-hub:ORG/REPO"
    )


def _load_failure(spec: ModelSpec, e: BaseException, offline: bool) -> ModelLoadError:
    what = spec.label
    if spec.kind in ("tag", "hf-hub"):
        text = str(e).lower()
        network = offline or any(
            s in text for s in ("offline", "connection", "name or service", "resolve", "urlopen", "network")
        )
        if network:
            return ModelLoadError(
                f"cannot download the weights for {what}: no network connection and they are not in the "
                "local Hugging Face cache; run once with a network, or pass a local checkpoint with "
                "--pretrained FILE"
            )
        return ModelLoadError(
            f"cannot load the weights for {what}: {_first_line(e)} (a local checkpoint can be passed with "
            "--pretrained FILE)"
        )
    return ModelLoadError(f"cannot load {what}: {_first_line(e)}")


def list_models() -> list[tuple[str, list[str], str]]:
    """The bundled model, then every open_clip architecture: (name, known pretrained tags, note)."""
    import open_clip

    register_bundled()
    rows = [(BUNDLED_NAME, ["bundled"], BUNDLED_DESCRIPTION)]
    for name in open_clip.list_models():
        if name != BUNDLED_NAME:
            rows.append((name, list(open_clip.list_pretrained_tags_by_model(name)), ""))
    return rows
