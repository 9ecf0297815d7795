"""Weight files: their identity (what cache keys and exported files record), the identity of the
image embeddings a model makes, and the safety check that refuses a pickle holding more than
tensors."""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from pathlib import Path
from typing import Any, Protocol

from ..base import cache
from ..base.errors import ModelLoadError, UnsafeCheckpointError


class Weights(Protocol):
    """What the weights' identity reads of a :class:`~zeroshot.model.models.ModelSpec` (which is made
    above this module: the protocol keeps the two from importing each other)."""

    @property
    def model(self) -> str: ...
    @property
    def pretrained(self) -> str | None: ...
    @property
    def kind(self) -> str: ...
    @property
    def label(self) -> str: ...


# open_clip's checkpoint file suffixes, and those it loads without pickle (safetensors, numpy with
# allow_pickle=False).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz", ".npy")
NON_PICKLE_SUFFIXES = (".safetensors", ".npz", ".npy")


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
        from ..base.files import atomic_write_bytes

        with contextlib.suppress(OSError):
            atomic_write_bytes(memo, value.encode())
    return value


def weights_identity(spec: Weights, memo_dir: Path | None = None) -> dict[str, Any]:
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


def image_cache_key(loaded: Any) -> str:
    """The identity of the image embeddings a loaded model makes: its name and weights, the package
    versions, its preprocessing and precision (the image-embedding cache's key, and the base of the
    ONNX engines' keys)."""
    return cache.key_text(
        {
            "kind": "image-embeddings",
            "model": loaded.spec.model,
            "weights": weights_identity(loaded.spec, cache.hash_memo_dir()),
            "open_clip": cache.package_version("open_clip_torch"),
            "torch": cache.package_version("torch"),
            "preprocess": repr(loaded.preprocess),
            "decode": "exif-transpose, high-bit-depth to 8-bit",
            "precision": loaded.precision,
        }
    )


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
        raise ModelLoadError(f"cannot read checkpoint {path}: {first_line(e)}") from None


def first_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
