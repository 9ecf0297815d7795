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

from ..base import cache

log = logging.getLogger("zeroshot")
SUBDIR = cache.IMAGE_SUBDIR
BUSY_TIMEOUT_S = 60.0


class ImageEmbeddingCache:
    """Thread-safe get/put of image embeddings for one model identity."""

    def __init__(self, key: str, dim: int, path: Path | None = None) -> None:
        self.key = key
        self.dim = dim
        self.path = path or cache.cache_dir() / SUBDIR / f"{cache.key_digest(key)}.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.read_only = False
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
        except sqlite3.OperationalError:
            raise  # cannot open or write it (read-only, disk full): not the file's fault, keep it
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
        """The stored embedding (numpy float32 [dim]) of a file with this content, or None.

        A cache that cannot be read (a lock held too long, a disk error) is a miss, never an error.
        """
        import numpy as np

        try:
            row = self._conn().execute("SELECT data FROM emb WHERE digest = ?", (digest,)).fetchone()
        except sqlite3.Error as e:
            log.debug("image cache read failed: %s", e)
            return None
        if row is None or len(row[0]) != 4 * self.dim:
            return None
        return np.frombuffer(row[0], dtype=np.float32)

    def put_many(self, rows: list[tuple[str, Any]]) -> None:
        """Store embeddings; one transaction, so a crash leaves all or none of them.

        When the cache cannot be written (disk full, read-only), the transaction is rolled back,
        one warning says so, and later puts are skipped: the run's records are unaffected.
        """
        import numpy as np

        if self.read_only:
            return
        data = [(d, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for d, v in rows]
        try:
            conn = self._conn()
            with conn:
                conn.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?)", data)
        except sqlite3.Error as e:
            self.read_only = True
            _unwritable(e)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def open_image_cache(key: str, dim: int) -> ImageEmbeddingCache | None:
    """The image-embedding cache for ``key``, or None (with one warning) when it cannot be used:
    a read-only or full cache folder must not stop a run that would be right without it."""
    try:
        return ImageEmbeddingCache(key, dim)
    except (OSError, sqlite3.Error) as e:
        _unwritable(e)
        return None


def _unwritable(error: BaseException) -> None:
    cache.warn_unwritable("image embeddings", error, "images are encoded again on every run")


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
