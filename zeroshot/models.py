"""Resolve a model + weights spec and load it through open_clip's own factory.

This is the only module that calls open_clip's model factory. It turns ``--model`` and
``--pretrained`` into a :class:`ModelSpec` (cheap: no torch import), gives each spec a *weights
identity* for cache keys, and loads the model with the preprocessing open_clip returns for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
    # For a checkpoint file: the pretrained tag whose preprocessing it follows (``--preprocess``);
    # None lets :func:`file_preprocess` infer it from the architecture's tags.
    preprocess: str | None = None

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


def spec_built_for(model: str, pretrained: str | None, preprocess: str | None = None) -> ModelSpec:
    """The model an exported classifier names (its ``model`` and ``pretrained``), found on this
    machine: the bundled model's weights wherever this install keeps them, not the path recorded
    where the classifier was built."""
    if model == BUNDLED_NAME:
        return resolve_spec(BUNDLED_NAME)
    return resolve_spec(model, pretrained, preprocess)


def resolve_spec(model: str | None = None, pretrained: str | None = None, preprocess: str | None = None) -> ModelSpec:
    """Apply defaults (``ZEROSHOT_MODEL``/``ZEROSHOT_PRETRAINED``) and classify the weights source.

    ``preprocess`` (``--preprocess TAG``) applies to checkpoint files only: see :func:`file_preprocess`.
    """
    spec = _resolve_spec(model, pretrained)
    if preprocess:
        if spec.kind != "file":
            raise UsageError(
                f"--preprocess {preprocess} applies to a checkpoint file (--pretrained FILE); {spec.label} brings "
                "its own preprocessing"
            )
        return ModelSpec(spec.model, spec.pretrained, spec.kind, preprocess.strip())
    return spec


def _resolve_spec(model: str | None, pretrained: str | None) -> ModelSpec:
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


def _hub_address() -> tuple[str, int]:
    """(host, port) of the Hugging Face endpoint (``HF_ENDPOINT``, else huggingface.co)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    scheme, _, rest = endpoint.rpartition("://")
    netloc = rest.split("/", 1)[0]
    host, _, port = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
    return host, int(port) if port.isdigit() else (80 if scheme == "http" else 443)


def _reachable(address: tuple[str, int], timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``address`` opens within ``timeout`` seconds (name lookup
    included, which has no timeout of its own: hence the thread)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
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
    rest, instead of retrying for a minute (transformers' tokenizers too: open_clip #968). Returns
    True when the network is unusable: the endpoint's name does not resolve or it takes no connection.
    """
    with contextlib.suppress(ImportError):
        import huggingface_hub.constants as hf_constants

        if hf_constants.HF_HUB_OFFLINE:
            return True
        if not _reachable(_hub_address()):
            hf_constants.HF_HUB_OFFLINE = True
            os.environ["HF_HUB_OFFLINE"] = "1"  # for transformers, which may read it itself
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


class _OpenClipWithoutTransformers(importlib.abc.MetaPathFinder):
    """Import open_clip without the ``transformers`` it imports eagerly whenever it is installed.

    Only a few families use it (their tokenizer or text tower), yet importing it costs every run
    0.8 s on a 2-core CPU, a fifth of a one-image classification. Installed on ``sys.meta_path`` by
    the CLI (:func:`defer_transformers`), this finder wraps open_clip's own loader so that, while the
    package executes, ``import transformers`` fails as if it were absent; :func:`_attach_transformers`
    hands it over before a model that needs it is built. Library users' imports are left alone.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "open_clip" or "open_clip" in sys.modules:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and "transformers" not in sys.modules:
            spec.loader = _HidingLoader(spec.loader)
        return spec


class _HidingLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        sys.modules["transformers"] = None  # type: ignore[assignment]  # "import transformers" -> ImportError
        try:
            self.loader.exec_module(module)
        finally:
            if sys.modules.get("transformers", 0) is None:
                del sys.modules["transformers"]


def defer_transformers() -> None:
    """For the CLI: open_clip, when it is imported, comes without transformers until a model needs it."""
    if "open_clip" not in sys.modules and not any(isinstance(f, _OpenClipWithoutTransformers) for f in sys.meta_path):
        sys.meta_path.insert(0, _OpenClipWithoutTransformers())


def hf_text_repo(name: str) -> str | None:
    """The Hugging Face repository of the architecture's tokenizer or text tower, if it has one
    (such models need ``transformers``)."""
    import open_clip

    text = (open_clip.get_model_config(name.replace("/", "-")) or {}).get("text_cfg", {})
    return text.get("hf_tokenizer_name") or text.get("hf_model_name") or None


def _attach_transformers() -> None:
    """Give open_clip the transformers that :func:`defer_transformers` kept from it (an ImportError
    here, when it is not installed, becomes the one-line "needs the 'transformers' package")."""
    hf_model = sys.modules.get("open_clip.hf_model")
    if hf_model is None or getattr(hf_model, "transformers", None) is not None:
        return
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    hf_model.transformers, hf_model.AutoConfig = transformers, AutoConfig  # type: ignore[attr-defined]
    hf_model.AutoModel, hf_model.AutoTokenizer = AutoModel, AutoTokenizer  # type: ignore[attr-defined]


# torch.nn.init's in-place initialisers, and the tensor methods that timm's own trunc_normal_ uses.
_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "xavier_uniform_",
    "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)  # fmt: skip
_INIT_METHODS = ("uniform_", "normal_", "erfinv_")


@contextlib.contextmanager
def _skip_random_init() -> Iterator[None]:
    """Build modules without drawing their random initial weights: every one is overwritten anyway.

    open_clip builds a model with random weights, then copies the checkpoint over it. The drawing
    is pure waste (22 s of a 1.9-billion-parameter MetaCLIP 2 model's load on a 2-core CPU, 0.9 s
    of ViT-B-32's); with it skipped, parameters stay uninitialised memory until the copy. That is
    safe only because :func:`open_clip.create_model_from_pretrained` loads a full checkpoint with
    ``strict=True`` (every parameter and persistent buffer must be in it) or raises. Buffers not in
    checkpoints (causal masks, rotary tables, position ids) are computed, never drawn: untouched.
    """
    import torch

    init = torch.nn.init
    saved: dict[tuple[Any, str], Any] = {}
    for name in _INIT_FUNCTIONS:
        if hasattr(init, name):
            saved[(init, name)] = getattr(init, name)
            setattr(init, name, _keep)
    for name in _INIT_METHODS:
        saved[(torch.Tensor, name)] = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, _keep)
    try:
        yield
    finally:
        for (owner, name), original in saved.items():
            setattr(owner, name, original)


def _keep(tensor: Any, *args: Any, **kwargs: Any) -> Any:
    return tensor


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


class DownloadReport(Protocol):
    """What :func:`load_model` tells about each file it downloads (the CLI draws it; a library user
    may pass their own). ``start`` gets what (``org/repo/file``), the size in bytes when known and
    the folder it goes to; ``progress`` the bytes so far; ``end`` whether it completed."""

    def start(self, what: str, size: int | None, dest: str) -> None: ...

    def progress(self, done: int) -> None: ...

    def end(self, ok: bool) -> None: ...


class _Tracker:
    """Forwards to another report (if any) and remembers a download that did not complete."""

    def __init__(self, inner: DownloadReport | None) -> None:
        self.inner = inner
        self.current: str | None = None
        self.broken: str | None = None

    def start(self, what: str, size: int | None, dest: str) -> None:
        self.current = what
        if self.inner is not None:
            self.inner.start(what, size, dest)

    def progress(self, done: int) -> None:
        if self.inner is not None:
            self.inner.progress(done)

    def end(self, ok: bool) -> None:
        if not ok:
            self.broken = self.current
        if self.inner is not None:
            self.inner.end(ok)


@contextlib.contextmanager
def reporting_downloads(report: DownloadReport | None) -> Iterator[None]:
    """While open_clip and transformers load, report each file huggingface_hub fetches to ``report``.

    Both fetch through ``huggingface_hub.file_download._download_to_tmp_and_move`` (plain HTTP or
    Xet alike), which is wrapped here; progress is the size of the file being written, read every
    0.2 s. huggingface_hub's own bars are off meanwhile (they would print on stderr in any case).
    """
    if report is None:
        yield
        return
    try:
        from huggingface_hub import constants as hf_constants
        from huggingface_hub import file_download
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:
        yield
        return
    original = file_download._download_to_tmp_and_move

    def wrapped(
        incomplete_path: Path, destination_path: Path, url_to_download: str, headers: Any,
        expected_size: int | None, filename: str, force_download: bool, *args: Any, **kwargs: Any,
    ) -> None:  # fmt: skip
        if os.path.exists(destination_path) and not force_download:
            return original(incomplete_path, destination_path, url_to_download, headers, expected_size, filename,
                            force_download, *args, **kwargs)  # fmt: skip
        where = url_to_download.split("/resolve/", 1)
        what = f"{where[0].split('://', 1)[-1].split('/', 1)[-1]}/{filename}" if len(where) == 2 else filename
        report.start(what, expected_size, str(hf_constants.HF_HUB_CACHE))
        stop = threading.Event()

        def written() -> int:
            # huggingface_hub writes to ``<stem>.<random>.incomplete`` beside ``incomplete_path``
            # (2.x) or to ``incomplete_path`` itself (older): whichever is there.
            part = Path(incomplete_path)
            sizes = [0]
            with contextlib.suppress(OSError):
                sizes += [p.stat().st_size for p in part.parent.glob(f"{part.stem}.*.incomplete")]
            with contextlib.suppress(OSError):
                sizes.append(part.stat().st_size)
            return max(sizes)

        def poll() -> None:
            while not stop.wait(0.2):
                report.progress(written())

        watcher = threading.Thread(target=poll, name="zeroshot-download", daemon=True)
        watcher.start()
        ok = False
        try:
            original(incomplete_path, destination_path, url_to_download, headers, expected_size, filename,
                     force_download, *args, **kwargs)  # fmt: skip
            ok = True
        finally:
            stop.set()
            watcher.join()
            if ok:
                with contextlib.suppress(OSError):
                    report.progress(os.path.getsize(destination_path))
            report.end(ok)

    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()
    file_download._download_to_tmp_and_move = wrapped
    try:
        yield
    finally:
        file_download._download_to_tmp_and_move = original
        if not bars_were_off:
            enable_progress_bars()


def load_model(
    spec: ModelSpec, device: str = "cpu", precision: str = "fp32", downloads: DownloadReport | None = None
) -> LoadedModel:
    """Build the model with open_clip's factory and load its weights; never random weights.

    The preprocessing is the inference transform open_clip returns for this model and checkpoint.
    ``precision`` is passed to open_clip (fp16/bf16 weights; its LayerNorms keep fp32 maths).
    ``downloads`` hears about each file fetched from the Hugging Face Hub (:class:`DownloadReport`).
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
        if spec.model != BUNDLED_NAME:
            cfg, why = file_preprocess(spec.model.replace("/", "-"), spec.preprocess)
            for key in ("mean", "std", "interpolation", "resize_mode"):
                if cfg and key in cfg:
                    kwargs[f"image_{key}"] = cfg[key]
            if spec.preprocess or not _is_default_preprocess(cfg):  # say so when it is not the usual
                notes.append(f"{spec.model} from a checkpoint file: {why}")
    elif spec.kind == "local-dir":
        folder = Path(spec.model.split(":", 1)[1])
        for p in folder.iterdir():
            if p.suffix in (".pt", ".pth", ".bin", ".ckpt"):
                check_checkpoint_safe(p)
    elif spec.kind == "hf-hub":
        offline = _go_offline_if_unreachable()

    tracker = _Tracker(downloads)
    try:
        if spec.kind in ("hf-hub", "local-dir") or hf_text_repo(spec.model):
            _attach_transformers()
        with _quiet_third_party(), reporting_downloads(tracker), _skip_random_init():
            model, preprocess = open_clip.create_model_from_pretrained(
                spec.model, pretrained=spec.pretrained, device=device, precision=precision, **kwargs
            )
            tokenizer = open_clip.get_tokenizer(spec.model)
    except (ModelLoadError, UsageError):
        raise
    except Exception as e:
        raise _load_failure(spec, e, offline, tracker.broken) from None
    model.eval()
    return LoadedModel(
        spec=spec, model=model, preprocess=preprocess, tokenizer=tokenizer, device=device, notes=notes,
        precision=precision,
    )  # fmt: skip


# The pretrained-config fields that make up an eval transform (create_model_from_pretrained's
# image_* arguments; open_clip's tags set no others).
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


def _tag_preprocess(name: str, tag: str) -> dict[str, Any]:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in PREPROCESS_KEYS}


def describe_preprocess(cfg: dict[str, Any]) -> str:
    """``mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5), bicubic, squash resize``: for messages."""

    from open_clip import constants as c

    named = {"OpenAI": c.OPENAI_DATASET_MEAN, "ImageNet": c.IMAGENET_MEAN, "Inception": c.INCEPTION_MEAN}

    def nums(v: Any) -> str:
        return "(" + ", ".join(f"{x:g}" for x in v) + ")"

    name = next((n for n, m in named.items() if tuple(cfg.get("mean", ())) == tuple(m)), None)
    if name and name != "Inception":
        parts = [f"{name} mean/std"]
    else:
        parts = [f"{k} {nums(cfg[k])}" for k in ("mean", "std") if k in cfg]
    parts += [str(cfg[k]) for k in ("interpolation",) if k in cfg]
    parts += [f"{cfg['resize_mode']} resize"] if "resize_mode" in cfg else []
    return ", ".join(parts) or "open_clip's defaults"


def file_preprocess(name: str, choice: str | None = None) -> tuple[dict[str, Any] | None, str]:
    """(preprocessing config, what was chosen and why) for weights of ``name`` given as a file.

    open_clip gives a checkpoint file its *default* preprocessing whatever the architecture's
    weights were trained with (open_clip #1068): OpenAI's mean/std and shortest-side resize for
    SigLIP (which wants 0.5/0.5 and a squash) or MobileCLIP (0/1, bilinear). Here the architecture's
    own is used: the one its pretrained tags share; ``choice`` (a tag) where they differ; open_clip's
    default only for an architecture with no tags.
    """
    import open_clip

    tags = list(open_clip.list_pretrained_tags_by_model(name))
    if choice:
        if choice not in tags:
            known = ", ".join(tags) if tags else "none"
            raise UsageError(f"--preprocess {choice}: not a pretrained tag of {name} (its tags: {known})")
        cfg = _tag_preprocess(name, choice)
        return cfg, f"the preprocessing of its '{choice}' weights: {describe_preprocess(cfg)}"
    if not tags:
        return None, f"open_clip's default preprocessing ({name} has no pretrained tags to take it from)"
    groups: dict[str, list[str]] = {}
    cfgs: dict[str, dict[str, Any]] = {}
    for tag in tags:
        cfg = _tag_preprocess(name, tag)
        key = repr(sorted(cfg.items()))
        groups.setdefault(key, []).append(tag)
        cfgs[key] = cfg
    if len(groups) == 1:
        (cfg,) = cfgs.values()
        return cfg, f"the preprocessing all its pretrained tags use: {describe_preprocess(cfg)}"
    options = "; ".join(f"{', '.join(t)}: {describe_preprocess(cfgs[k])}" for k, t in groups.items())
    raise UsageError(
        f"{name}'s pretrained weights use different preprocessing ({options}); say which your checkpoint "
        "follows with --preprocess TAG"
    )


def _is_default_preprocess(cfg: dict[str, Any] | None) -> bool:
    """Whether ``cfg`` is what open_clip gives a checkpoint file anyway (OpenAI's mean/std, bicubic,
    shortest-side resize): then nothing was changed and there is nothing to say."""
    from open_clip import constants as c

    default = {"mean": c.OPENAI_DATASET_MEAN, "std": c.OPENAI_DATASET_STD, "interpolation": "bicubic",
               "resize_mode": "shortest"}  # fmt: skip
    return not cfg or all(tuple(v) == tuple(default[k]) if isinstance(v, (tuple, list)) else v == default[k]
                          for k, v in cfg.items() if k in default)  # fmt: skip


def _unknown_model(name: str) -> ModelLoadError:
    import difflib

    import open_clip

    close = difflib.get_close_matches(name, open_clip.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ModelLoadError(
        f"unknown model '{name}'{hint}; `zeroshot models` lists the architectures, or use hf-hub:ORG/REPO"
    )


# Packages some model families need beyond the default install, and why (the [hf] extra).
HF_PACKAGES = {"transformers": "Hugging Face tokenizer or text tower", "sentencepiece": "SentencePiece vocabulary"}
HF_INSTALL = "pip install 'transformers>=4.40' 'sentencepiece>=0.2'"


def _load_failure(spec: ModelSpec, e: BaseException, offline: bool, broken: str | None = None) -> ModelLoadError:
    what = spec.label
    if broken is not None:
        return ModelLoadError(
            f"the download of {broken} for {what} broke off ({_first_line(e, 160)}); run again to resume it"
        )
    missing = _missing_package(e)
    if missing is not None:
        need = HF_PACKAGES.get(missing, "a package it imports")
        return ModelLoadError(
            f"{what} needs the '{missing}' package ({need}), which is not installed: {HF_INSTALL} "
            "(zeroshot's [hf] extra)"
        )
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


def _missing_package(e: BaseException) -> str | None:
    """The top-level package whose absence caused ``e`` (an ImportError, or transformers' own
    "requires the ... library" errors), if any."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ImportError) and getattr(e, "name", None):
            return str(e.name).split(".")[0]
        text = str(e)
        for name in HF_PACKAGES:
            if f"requires the {name.capitalize()} library" in text or f"requires the {name} library" in text:
                return name
            if f"No module named '{name}'" in text:
                return name
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return None


def list_models() -> list[tuple[str, list[str], str]]:
    """The bundled model, then every open_clip architecture: (name, known pretrained tags, note)."""
    import open_clip

    register_bundled()
    rows = [(BUNDLED_NAME, ["bundled"], BUNDLED_DESCRIPTION)]
    for name in open_clip.list_models():
        if name != BUNDLED_NAME:
            rows.append((name, list(open_clip.list_pretrained_tags_by_model(name)), ""))
    return rows
