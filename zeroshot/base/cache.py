"""The cache folder: what zeroshot made once and reuses, the cache keys, the text classifier's entries.

Under :func:`cache_dir`, each kind in a folder of its own, every file named by the SHA-256 of its key:

- ``text/<sha256>.safetensors``: text classifiers (this module): one safetensors file (no pickle)
  each. The key is a JSON document of everything that changes the numbers; it is stored in the
  file's metadata too and compared on every load, so a renamed, truncated, corrupted or foreign
  file is detected and rebuilt rather than trusted;
- ``hashes/<sha256>.sha256``: checkpoint files' content hashes (:func:`zeroshot.model.weightfiles.file_sha256`);
- ``images/<sha256>.sqlite`` (and SQLite's ``-wal``, ``-shm``, ``-journal``): image embeddings,
  one database per model identity (:mod:`zeroshot.image.imagecache`);
- ``onnx/<sha256>/``: the CPU engine's exports (:mod:`zeroshot.towers.onnxexport`): ``image.onnx``
  or ``text.onnx``, its weights beside it when large (``.onnx.data``), ``meta.json`` or
  ``rejected.json``; ``onnx/<sha256>.lock``: the lock a run holds while it makes that engine;
- unfinished writes, left by a run stopped half-way: ``.<name>.<random>.tmp`` beside the file
  being written, ``onnx/.export-*/`` and ``onnx/.rejected-*/``.

Anything else there is not zeroshot's: :func:`inventory` lists it as "other" and :func:`clear`
leaves it. Neither follows a symbolic link. Writes go to a temporary file in the same folder,
then ``os.replace``. Reading and listing use numpy and safetensors only, so a cache hit needs no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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


_warned_unwritable: set[str] = set()  # the kinds this process has warned about


def warn_unwritable(what: str, error: BaseException, cost: str) -> None:
    """Say once per process and kind, as a warning, that ``what`` cannot be stored, why, and what
    it costs (``cost``); the run goes on without it.

    A read-only or full cache folder costs speed on the next run, never this run's results, so
    it is not an error. Whatever was being written is left out whole (writes are atomic).
    """
    if what in _warned_unwritable:
        return
    _warned_unwritable.add(what)
    import logging

    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    reason = reason[:1].lower() + reason[1:]
    logging.getLogger("zeroshot").warning(
        "%s cannot be cached: cannot write to the cache folder %s (%s); %s", what, cache_dir(), reason, cost
    )


def key_text(key: dict[str, Any]) -> str:
    """Canonical JSON of a key: the same key always gives the same text and digest."""
    return json.dumps({"format": FORMAT_VERSION, **key}, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def key_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def entry_path(digest: str) -> Path:
    return cache_dir() / TEXT_SUBDIR / f"{digest}{SUFFIX}"


class CorruptEntry(Exception):
    """A cache file that exists but cannot be used; the message says why, on one line."""


# safetensors' header errors, in the words of a cache listing.
_HEADER_PROBLEMS = (
    ("header too small", "file is truncated (no header)"),
    ("header too large", "file is truncated or not a safetensors file (bad header length)"),
    ("invalid header length", "file is truncated or not a safetensors file (bad header length)"),
    ("not fully covered", "file is truncated (its tensors end early)"),
    ("invalid type", "header is not a safetensors header (a JSON value of the wrong kind)"),
    ("invalid JSON", "header is not valid JSON"),
    ("invalid UTF-8", "header is not valid JSON (not UTF-8)"),
)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """The file through ``safetensors.safe_open``: one opening gives the header (checked against the
    file's length) and the tensors; its errors are :class:`CorruptEntry` with a one-line reason."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), "np")
    except SafetensorError as e:
        text = " ".join(str(e).split())
        problem = next((said for found, said in _HEADER_PROBLEMS if found in text), None)
        raise CorruptEntry(problem or f"unreadable ({text[:120]})") from None
    with handle as f:
        yield f


def _metadata(f: Any) -> dict[str, str]:
    return dict(f.metadata() or {})  # safetensors has checked it is a map of strings


def read_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata (links followed: a classifier file may be one)."""
    with _opened(path) as f:
        return _metadata(f)


@dataclass
class CachedClassifier:
    path: Path
    weights: Any  # numpy float32 array [num_classes, dim]
    meta: dict[str, str]


def load_entry(path: Path, expected_key: str, num_classes: int) -> CachedClassifier:
    """Load and verify an entry, reading the file once; raise :class:`CorruptEntry` saying what is
    wrong with it. An entry is a regular file: anything else in its place is not one of ours."""
    import numpy as np

    if not stat.S_ISREG(path.lstat().st_mode):
        raise CorruptEntry("not a regular file")
    with _opened(path) as f:
        meta = _metadata(f)
        if meta.get("key") != expected_key:
            raise CorruptEntry("its key does not match (a foreign or stale file)")
        names = f.keys()
        weights = f.get_tensor("weights") if "weights" in names else None
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


@contextlib.contextmanager
def exclusive(path: Path, waiting: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive lock (``flock``) on the lock file ``path`` in the cache, made if missing and
    kept after; another process asking for it waits until it is let go (``waiting`` hears once
    that it must wait). Yields whether the lock is held: a cache where the lock file cannot be made
    (unwritable, or a link in its place, never followed) yields False, and the caller goes on
    unlocked. A process forked while the lock is held would hold it too: fork nothing inside."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        fd = -1
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting is not None:
                    waiting()
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd >= 0
    finally:
        if fd >= 0:
            os.close(fd)


# --- what the folder holds: every file, by kind (cache show), and what clear may delete ------------

TEXT_KIND, ENGINE_KIND, IMAGE_KIND, HASH_KIND = "text-classifier", "onnx-engine", "image-embeddings", "checkpoint-hash"
LOCK_KIND, UNFINISHED_KIND, OTHER_KIND = "lock", "unfinished-write", "other"
KINDS = (TEXT_KIND, ENGINE_KIND, IMAGE_KIND, HASH_KIND, LOCK_KIND, UNFINISHED_KIND, OTHER_KIND)
_HEX = "[0-9a-f]{64}"
_TEXT_FILE, _MEMO_FILE = rf"{_HEX}\.safetensors", rf"{_HEX}\.sha256"


def _temporary(name: str) -> str:
    """The name :func:`~zeroshot.base.files.atomic_write_bytes` writes ``name`` under until it is whole."""
    return rf"(?P<entry>\.{name}\..+\.tmp)"


# A kind folder's files: (name pattern, kind), tried in order; the group "entry" names the entry.
_FLAT_RULES = {
    TEXT_SUBDIR: ((f"(?P<entry>{_TEXT_FILE})", TEXT_KIND), (_temporary(_TEXT_FILE), UNFINISHED_KIND)),
    HASH_SUBDIR: ((f"(?P<entry>{_MEMO_FILE})", HASH_KIND), (_temporary(_MEMO_FILE), UNFINISHED_KIND)),
    IMAGE_SUBDIR: ((rf"(?P<entry>{_HEX}\.sqlite)(-wal|-shm|-journal)?", IMAGE_KIND),),
    ONNX_SUBDIR: ((rf"(?P<entry>{_HEX}\.lock)", LOCK_KIND),),
}
ENGINE_FILES = re.compile(r"(image|text)\.onnx(\.data)?|meta\.json|rejected\.json")
_ENGINE_DIR, _UNFINISHED_DIR = re.compile(_HEX), re.compile(r"\.(export|rejected)-.+")


@dataclass
class CacheEntry:
    """One thing in the cache folder: an entry of a kind with its files (a text classifier, an
    engine's folder, a database and its journals...), or one file that is not zeroshot's
    (``kind`` "other"). ``files``: each path with its ``lstat``."""

    kind: str
    path: Path
    files: list[tuple[Path, os.stat_result]] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    problem: str | None = None

    @property
    def size(self) -> int:
        return sum(st.st_size for _, st in self.files)

    @property
    def modified(self) -> float:
        return max(st.st_mtime for _, st in self.files)


def _walk(folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every path under ``folder`` that is not a folder (links included, never followed), with its lstat."""
    try:
        found = list(os.scandir(folder))
    except OSError:
        return
    for item in sorted(found, key=lambda e: e.name):
        try:
            if item.is_dir(follow_symlinks=False):
                yield from _walk(Path(item.path))
            else:
                yield Path(item.path), item.stat(follow_symlinks=False)
        except OSError:
            continue  # gone while we looked


def _kind_of(parts: tuple[str, ...]) -> tuple[str, str]:
    """The kind of a regular file at ``parts`` (its path in the cache folder) and the path of the
    entry it belongs to; ``other`` for anything zeroshot does not write there."""
    name = "/".join(parts)
    if len(parts) == 2:
        for pattern, kind in _FLAT_RULES.get(parts[0], ()):
            match = re.fullmatch(pattern, parts[1])
            if match:
                return kind, f"{parts[0]}/{match['entry']}"
    in_onnx = len(parts) >= 3 and parts[0] == ONNX_SUBDIR
    if in_onnx and len(parts) == 3 and _ENGINE_DIR.fullmatch(parts[1]) and ENGINE_FILES.fullmatch(parts[2]):
        return ENGINE_KIND, "/".join(parts[:2])
    if in_onnx and _UNFINISHED_DIR.fullmatch(parts[1]):
        return UNFINISHED_KIND, "/".join(parts[:2])
    return OTHER_KIND, name


def inventory(describe: bool = True) -> list[CacheEntry]:
    """Everything in the cache folder, as entries by kind (in :data:`KINDS` order, then by path):
    every file under it is in exactly one entry, so their sizes add up to the folder's. Only
    regular files can be zeroshot's; links, FIFOs and unknown names are "other". ``describe``:
    read each text classifier's metadata (its problem, when it has one)."""
    root = cache_dir()
    entries: dict[tuple[str, str], CacheEntry] = {}
    for path, st in _walk(root) if root.is_dir() else ():
        parts = path.relative_to(root).parts
        kind, where = _kind_of(parts) if stat.S_ISREG(st.st_mode) else (OTHER_KIND, "/".join(parts))
        entry = entries.setdefault((kind, where), CacheEntry(kind, root / where))
        entry.files.append((path, st))
    if describe:
        for entry in entries.values():
            if entry.kind == TEXT_KIND:
                try:
                    entry.meta = read_metadata(entry.path)
                except (CorruptEntry, OSError) as e:
                    entry.problem = str(e) if isinstance(e, CorruptEntry) else (e.strerror or str(e))
    return sorted(entries.values(), key=lambda e: (KINDS.index(e.kind), str(e.path)))


@dataclass
class EntryInfo:
    path: Path
    size: int
    meta: dict[str, str]
    problem: str | None = None


def list_entries() -> list[EntryInfo]:
    """All text-classifier entries, newest first, each file opened once; unreadable ones are listed
    with their problem."""
    out = [EntryInfo(e.path, e.size, e.meta, e.problem) for e in inventory() if e.kind == TEXT_KIND]
    out.sort(key=lambda e: e.meta.get("created", ""), reverse=True)
    return out


NOT_OURS = "not made by zeroshot"  # why clear leaves a file of no known kind


@dataclass
class Cleared:
    """What :func:`clear` did: files removed, bytes freed, and what it left: (path, bytes, why)."""

    removed: int = 0
    freed: int = 0
    left: list[tuple[Path, int, str]] = field(default_factory=list)


def clear() -> Cleared:
    """Delete every file zeroshot made in the cache folder (each kind of :func:`inventory`, but
    "other"), then the entries' folders it emptied (the kind folders stay, for runs writing now).
    Links are never followed nor deleted; a file of no known kind, a lock a running export holds,
    or a file that cannot be deleted is left and named in :attr:`Cleared.left`."""
    done = Cleared()
    root = cache_dir()
    folders: set[Path] = set()
    for entry in inventory(describe=False):
        for path, listed in entry.files:
            if entry.kind == OTHER_KIND:
                done.left.append((path, listed.st_size, NOT_OURS))
                continue
            try:
                st = path.lstat()
                if not stat.S_ISREG(st.st_mode):  # replaced since it was listed
                    done.left.append((path, st.st_size, NOT_OURS))
                    continue
                if entry.kind != LOCK_KIND:
                    path.unlink()
                elif not _unlink_unless_held(path):
                    done.left.append((path, st.st_size, "in use by a running zeroshot"))
                    continue
            except FileNotFoundError:
                continue
            except OSError as e:
                done.left.append((path, listed.st_size, f"cannot delete it ({e.strerror or e})"))
                continue
            done.removed += 1
            done.freed += st.st_size
            folders.update(p for p in path.parents if root in p.parent.parents)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
    return done


def _unlink_unless_held(path: Path) -> bool:
    """Delete a lock file unless a run holds it (that run is exporting now, and a run started
    meanwhile must find the same file to wait on); False when it is held."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        path.unlink()
        return True
    finally:
        os.close(fd)


def package_version(name: str) -> str:
    """An installed distribution's version, for cache keys ("unknown" when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"
