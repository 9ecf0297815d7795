"""An optional on-disk cache of image embeddings, keyed by file content.

With it, classifying the same images again with new labels or templates costs one matrix multiply
per image instead of a decode and an image-tower forward. One SQLite file per model identity
(model, weights, open_clip/torch versions, preprocessing) holds rows ``sha256(file bytes) ->
float32 embedding``; the identity is also stored inside the file and checked on open, so an
embedding is never returned for another model. SQLite's locking (WAL mode, a busy timeout) makes
concurrent runs safe; a corrupted or foreign file is reported and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from . import cache

log = logging.getLogger("zeroshot")
SUBDIR = cache.IMAGE_SUBDIR
BUSY_TIMEOUT_S = 60.0


def image_cache_key(loaded: Any) -> str:
    from .classifier import _package_version
    from .models import weights_identity

    return cache.key_text(
        {
            "kind": "image-embeddings",
            "model": loaded.spec.model,
            "weights": weights_identity(loaded.spec, cache.hash_memo_dir()),
            "open_clip": _package_version("open_clip_torch"),
            "torch": _package_version("torch"),
            "preprocess": repr(loaded.preprocess),
            "decode": "exif-transpose, high-bit-depth to 8-bit",
            "precision": loaded.precision,
        }
    )


class ImageEmbeddingCache:
    """Thread-safe get/put of image embeddings for one model identity."""

    def __init__(self, key: str, dim: int, path: Path | None = None) -> None:
        self.key = key
        self.dim = dim
        self.path = path or cache.cache_dir() / SUBDIR / f"{cache.key_digest(key)}.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._open_verified()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _open_verified(self) -> None:
        try:
            conn = self._connect()
            with conn:
                conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.execute("CREATE TABLE IF NOT EXISTS emb (digest TEXT PRIMARY KEY, data BLOB NOT NULL)")
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('key', ?)", (self.key,))
                (stored,) = conn.execute("SELECT value FROM meta WHERE name = 'key'").fetchone()
            conn.close()
            if stored != self.key:
                raise sqlite3.DatabaseError("its key belongs to another model")
        except sqlite3.DatabaseError as e:
            log.warning("image cache %s is unusable (%s); starting it afresh", self.path, e)
            self._discard()
            conn = self._connect()
            with conn:
                conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.execute("CREATE TABLE IF NOT EXISTS emb (digest TEXT PRIMARY KEY, data BLOB NOT NULL)")
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('key', ?)", (self.key,))
            conn.close()

    def _discard(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def get(self, digest: str) -> Any:
        """The stored embedding (numpy float32 [dim]) of a file with this content, or None."""
        import numpy as np

        row = self._conn().execute("SELECT data FROM emb WHERE digest = ?", (digest,)).fetchone()
        if row is None or len(row[0]) != 4 * self.dim:
            return None
        return np.frombuffer(row[0], dtype=np.float32)

    def put_many(self, rows: list[tuple[str, Any]]) -> None:
        """Store embeddings; one transaction, so a crash leaves all or none of them."""
        import numpy as np

        data = [(d, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for d, v in rows]
        conn = self._conn()
        with conn:
            conn.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)", data)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
