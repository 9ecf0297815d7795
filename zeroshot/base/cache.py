"""The on-disk cache of text classifiers (averaged, normalized prompt embeddings).

Each entry is one safetensors file (no pickle) named by the SHA-256 of its key. The key is a JSON
document of everything that changes the numbers; it is stored in the file's metadata too and
compared on every load, so a renamed, truncated, corrupted or foreign file is detected and rebuilt
rather than trusted. Writes go to a temporary file in the same folder, then ``os.replace``.

Reading and listing use numpy only, so a cache hit needs no torch import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CacheError
from .files import atomic_write_bytes as atomic_write_bytes

FORMAT_VERSION = 1
TEXT_SUBDIR = "text"
HASH_SUBDIR = "hashes"
IMAGE_SUBDIR = "images"  # see imagecache.py
ONNX_SUBDIR = "onnx"  # see onnxexport.py
SUFFIX = ".safetensors"
# Rows of a stored classifier are unit vectors; anything further off was not written by us.
NORM_TOLERANCE = 1e-3


def cache_dir() -> Path:
    """``$ZEROSHOT_CACHE_DIR``, else ``$XDG_CACHE_HOME/zeroshot``, else ``~/.cache/zeroshot``."""
    explicit = os.environ.get("ZEROSHOT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "zeroshot"


def hash_memo_dir() -> Path:
    return cache_dir() / HASH_SUBDIR


_warned_unwritable = False


def warn_unwritable(what: str, error: BaseException) -> None:
    """Say once per run, as a warning, that the cache cannot be written; the run goes on without it.

    A read-only or full cache folder costs speed on the next run, never this run's results, so
    it is not an error. Whatever was being written is left out whole (writes are atomic).
    """
    global _warned_unwritable
    if _warned_unwritable:
        return
    _warned_unwritable = True
    import logging

    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    logging.getLogger("zeroshot").warning(
        "cannot write to the cache (%s: %s); carrying on without storing %s", cache_dir(), reason, what
    )


def key_text(key: dict[str, Any]) -> str:
    """Canonical JSON of a key: the same key always gives the same text and digest."""
    return json.dumps({"format": FORMAT_VERSION, **key}, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def key_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entry_path(digest: str) -> Path:
    return cache_dir() / TEXT_SUBDIR / f"{digest}{SUFFIX}"


class CorruptEntry(Exception):
    """A cache file that exists but cannot be used; the message says why."""


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """Parse a safetensors header by hand: 8-byte little-endian length, then JSON."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptEntry("file is truncated (no header)")
        (n,) = struct.unpack("<Q", head)
        if n <= 0 or 8 + n > size:
            raise CorruptEntry("file is truncated or not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CorruptEntry("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CorruptEntry("header is not a JSON object")
    return header, size


def read_metadata(path: Path) -> dict[str, str]:
    header, _ = _read_header(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise CorruptEntry("metadata is not a JSON object")
    return {str(k): str(v) for k, v in meta.items()}


@dataclass
class CachedClassifier:
    path: Path
    weights: Any  # numpy float32 array [num_classes, dim]
    meta: dict[str, str]


def load_entry(path: Path, expected_key: str, num_classes: int) -> CachedClassifier:
    """Load and verify an entry; raise :class:`CorruptEntry` saying what is wrong with it."""
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta = read_metadata(path)
    if meta.get("key") != expected_key:
        raise CorruptEntry("its key does not match (a foreign or stale file)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CorruptEntry(f"unreadable ({' '.join(str(e).split())[:120]})") from None
    weights = tensors.get("weights")
    if weights is None or weights.dtype != np.float32 or weights.ndim != 2 or weights.shape[0] != num_classes:
        raise CorruptEntry("its tensor is missing or has the wrong shape")
    if not np.isfinite(weights).all():
        raise CorruptEntry("its tensor holds non-finite values")
    norms = np.linalg.norm(weights.astype(np.float64), axis=1)
    if np.abs(norms - 1.0).max() > NORM_TOLERANCE:
        raise CorruptEntry("its rows are not unit vectors")
    return CachedClassifier(path=path, weights=weights, meta=meta)


def save_entry(path: Path, key: str, weights: Any, info: dict[str, Any]) -> None:
    """Store a [num_classes, dim] float32 array with its key and a few descriptive fields."""
    import numpy as np
    from safetensors.numpy import save

    array = np.ascontiguousarray(weights, dtype=np.float32)
    meta = {"key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    meta.update({k: str(v) for k, v in info.items()})
    try:
        atomic_write_bytes(path, save({"weights": array}, metadata=meta))
    except OSError as e:
        raise CacheError(f"cannot write cache file {path}: {e.strerror or e}") from e


@dataclass
class EntryInfo:
    path: Path
    size: int
    meta: dict[str, str]
    problem: str | None = None


def list_entries() -> list[EntryInfo]:
    """All text-classifier entries, newest first; unreadable ones are listed with their problem."""
    folder = cache_dir() / TEXT_SUBDIR
    if not folder.is_dir():
        return []
    out = []
    for path in folder.glob(f"*{SUFFIX}"):
        try:
            out.append(EntryInfo(path, path.stat().st_size, read_metadata(path)))
        except (CorruptEntry, OSError) as e:
            out.append(EntryInfo(path, path.stat().st_size if path.exists() else 0, {}, str(e)))
    out.sort(key=lambda e: e.meta.get("created", ""), reverse=True)
    return out


def clear() -> tuple[int, int]:
    """Delete every cache file (text entries, image embeddings, checkpoint hash memos, the CPU
    engine's exported towers, temporaries).

    Returns (files removed, bytes freed).
    """
    root = cache_dir()
    count = freed = 0
    for sub in (TEXT_SUBDIR, IMAGE_SUBDIR, HASH_SUBDIR, ONNX_SUBDIR):
        folder = root / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*"), reverse=True):  # files first, then their folders
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                    continue
                size = path.stat().st_size
                path.unlink()
                count += 1
                freed += size
    return count, freed


def package_version(name: str) -> str:
    """An installed distribution's version, for cache keys ("unknown" when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"
