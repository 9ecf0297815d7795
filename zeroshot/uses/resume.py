"""Long runs that survive interruption: ``classify -o FILE`` keeps its records as it makes them,
and ``--resume`` goes on from there.

The records go to a side file, ``FILE.partial``, which holds exactly the bytes FILE will hold
(for ``--format table``, JSON Lines: a table is drawn at the end). Each model batch is appended
with one write, and the file is fsync'd at least every :data:`FSYNC_EVERY` seconds. A second side
file, ``FILE.partial.json``, says how far the run got: the records and bytes of whole batches,
a digest of their inputs' paths, the run's key (model, labels, options) and its segments. It is
replaced atomically after each batch. When the run ends, FILE.partial is renamed to FILE.

A resumed run cuts FILE.partial back to the last whole batch, checks the key and the inputs it
holds, skips those inputs without decoding them, and continues. Its batches are then the
uninterrupted run's batches, so the final FILE is byte for byte the file one run would have
written. While a run writes, it holds a lock on FILE.partial: a second run with the same FILE
is refused instead of mixing records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..base.errors import UsageError
from ..base.files import Destination, _sync_folder, umask_mode

FSYNC_EVERY = 2.0  # seconds: how much a power cut can cost at most (a kill costs only the batch in hand)
MAGIC = "zeroshot partial output"


def side_files(target: Path) -> tuple[Path, Path]:
    """FILE.partial (the records so far) and FILE.partial.json (how far they go)."""
    return target.with_name(target.name + ".partial"), target.with_name(target.name + ".partial.json")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _path_bytes(path: str) -> bytes:
    return os.fsencode(path) + b"\0"  # any name, undecodable bytes too, and no two lists alike


def _read_meta(meta: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MAGIC else None


def _locked_by_another(path: Path) -> bool:
    """Whether a running process holds FILE.partial's lock (a run writing it right now)."""
    try:
        import fcntl
    except ImportError:  # no flock here (Windows): no protection against two runs, as before
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def check_before_run(records: Destination | None, resume: bool) -> None:
    """Before anything loads: ``--resume`` needs a regular ``--output`` FILE, and a side file left
    by an interrupted run is never overwritten (nor silently kept) by a run without ``--resume``."""
    if records is None or not records.regular:
        if resume:
            where = "stdout" if records is None else records.named
            raise UsageError(f"--resume needs --output FILE: records sent to {where} cannot be picked up again")
        return
    side, meta = side_files(records.target)
    if not side.exists():
        return
    if _locked_by_another(side):
        raise UsageError(f"another zeroshot run is writing {records.given} right now (its records so far: {side})")
    if resume:
        return
    data = _read_meta(meta)
    if data is None or not data.get("records"):
        return  # nothing kept in it (killed before its first batch): this run starts it again
    raise UsageError(
        f"{side} holds {data['records']:,} records of an interrupted run (started {data['segments'][0]['started']}): "
        "add --resume to go on from there, or delete it to start over"
    )


def run_key(**fields: Any) -> dict[str, Any]:
    """What must not change between an interrupted run and its resumption: JSON-able fields."""
    return json.loads(json.dumps(fields, sort_keys=True, default=str))


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


class _NotGiven:
    def __repr__(self) -> str:
        return "not given"


NOT_GIVEN = _NotGiven()  # a key field that a run left out (an option at its default)

KEY_WORDS = {
    "image": "model, weights, preprocessing, precision or runtime",
    "text": "labels, prompts or text classifier",
    "inputs": "inputs on the command line",
}


class PartialOutput:
    """FILE.partial and FILE.partial.json for one run (see the module's text)."""

    def __init__(
        self, dest: Destination, key: dict[str, Any], *, resume: bool, fmt: str, read_back: bool = False
    ) -> None:
        """``fmt``: the records' format (a table's side file holds JSON Lines). ``read_back``: a
        resumed run needs the records already kept (a table, a contact sheet): :attr:`kept`."""
        self.dest = dest
        self.side, self.meta = side_files(dest.target)
        given = Path(dest.given)
        self.shown = given.with_name(given.name + ".partial") if given.resolve() == dest.target else self.side
        self.key = key
        self.records = self.bytes = self.errors = 0
        self.digest = hashlib.sha256()
        self.segments: list[dict[str, Any]] = []
        self.kept: list[dict[str, Any]] = []  # the records already there (read_back, or a table)
        self.synced = time.monotonic()
        old = _read_meta(self.meta) if resume and self.side.exists() else None
        try:
            self.fd = os.open(self.side, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, umask_mode())
        except OSError as e:
            raise UsageError(f"{dest.named}: cannot write {self.side} ({e.strerror or e})") from None
        self._lock()
        if old is not None and old.get("records"):
            self._take_over(old, fmt if read_back or fmt == "table" else None)
        else:
            os.ftruncate(self.fd, 0)
        self.want_digest = old["paths_sha256"] if old is not None and old.get("records") else None
        self.segments.append({"started": _now(), "records_before": self.records})
        os.lseek(self.fd, self.bytes, os.SEEK_SET)

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise UsageError(f"another zeroshot run is writing {self.dest.given} right now") from None

    def _take_over(self, old: dict[str, Any], read_as: str | None) -> None:
        """Go on from an interrupted run's side file: same key, cut back to its last whole batch."""
        for field in sorted(set(self.key) | set(old["key"])):  # a field only one of them has differs too
            was, value = old["key"].get(field, NOT_GIVEN), self.key.get(field, NOT_GIVEN)
            if was != value:
                os.close(self.fd)
                # the identities and digests say only what changed; an option says from what to what
                what = KEY_WORDS.get(field) or f"--{field.replace('_', '-')} ({was!r}, now {value!r})"
                raise UsageError(
                    f"--resume: {self.shown} was made with other {what}: "
                    "run it as it was, or delete the side file to start over"
                )
        size = os.fstat(self.fd).st_size
        if size < old["bytes"]:
            os.close(self.fd)
            raise UsageError(
                f"--resume: {self.side} lost records it had (a crash of the machine?): delete it to start over"
            )
        os.ftruncate(self.fd, old["bytes"])  # a batch cut short by a kill, written past the last mark
        self.records, self.bytes, self.segments = old["records"], old["bytes"], old["segments"]
        self.errors = int(old.get("errors", 0))
        if "ended" not in self.segments[-1]:  # killed (SIGKILL, a crash): it could not say so itself
            self.segments[-1].update(interrupted=True, killed=True, records_after=self.records)
        if read_as is not None:
            with open(self.fd, "rb", closefd=False) as f:
                f.seek(0)
                self.kept = read_records(f.read(self.bytes), read_as)

    def skip_done(self, inputs: Iterable[Any]) -> Iterator[Any]:
        """The inputs after the ones this side file holds records of. Those are read now (their
        paths checked against the digest), never decoded; pauses of a live stdin pass over."""
        from ..image.images import Pause

        it = iter(inputs)
        if self.want_digest is None:
            return it
        check, seen = hashlib.sha256(), 0
        while seen < self.records:
            item = next(it, None)
            if item is None:
                break
            if isinstance(item, Pause):
                continue
            check.update(_path_bytes(item.path))
            seen += 1
        if seen < self.records or check.hexdigest() != self.want_digest:
            os.close(self.fd)  # the side file stays as it was, for a run with the right inputs
            raise UsageError(
                f"--resume: the first {self.records:,} inputs are not the ones {self.shown} holds records of "
                "(files added, removed or renamed before the point it reached): delete it to start over"
            )
        self.digest, self.want_digest = check, None
        return it

    def append_batch(self, data: bytes, paths: list[str], errors: int = 0) -> None:
        """One batch's records (their bytes, their inputs' paths, how many are errors), then the
        mark that says so."""
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.bytes += len(data)
        self.records += len(paths)
        self.errors += errors
        for path in paths:
            self.digest.update(_path_bytes(path))
        if time.monotonic() - self.synced >= FSYNC_EVERY:
            os.fsync(self.fd)
            self.synced = time.monotonic()
        self._write_meta()

    def _write_meta(self) -> None:
        data = {"format": MAGIC, "output": str(self.dest.target), "key": self.key, "records": self.records,
                "errors": self.errors, "bytes": self.bytes, "paths_sha256": self.digest.hexdigest(),
                "segments": self.segments, "pid": os.getpid()}  # fmt: skip
        tmp = self.meta.with_name(self.meta.name + ".tmp")
        tmp.write_text(json.dumps(data, ensure_ascii=True), encoding="utf-8")
        os.replace(tmp, self.meta)

    def finish(self, closing: bytes, *, rename: bool) -> None:
        """The run is complete: FILE.partial becomes FILE (``rename``; a table was written to FILE
        on its own), and the side files go."""
        if closing:
            self.append_batch(closing, [])
        self.segments[-1].update(ended=_now(), records_after=self.records)
        os.fsync(self.fd)
        os.close(self.fd)
        if rename:
            os.replace(self.side, self.dest.target)
        else:
            self.side.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
        self.meta.with_name(self.meta.name + ".tmp").unlink(missing_ok=True)
        _sync_folder(self.dest.target.parent)

    def keep(self) -> str | None:
        """The run stops early: what it made is kept for ``--resume`` (the batch in hand is not:
        it was never written). Returns the line that says so, or None when nothing was kept."""
        self.segments[-1].update(ended=_now(), records_after=self.records, interrupted=True)
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
        if self.records == 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.side.unlink(missing_ok=True)
            self.meta.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            self._write_meta()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        return f"{self.records:,} records kept in {self.shown}: run the same command with --resume to go on"


def read_records(data: bytes, fmt: str) -> list[dict[str, Any]]:
    """The records in a side file's bytes: JSON Lines (and a table's), a JSON array not yet closed
    (one record per line), or CSV (its columns back into a record, as far as CSV keeps them)."""
    if fmt == "csv":
        import csv
        import io

        rows = csv.DictReader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))
        out: list[dict[str, Any]] = []
        for row in rows:
            if row.get("error"):
                out.append({"path": row["path"], "error": row["error"]})
                continue
            top = json.loads(row["top_k"] or "[]")
            record: dict[str, Any] = {"path": row["path"], "label": row["label"] or None,
                                      "score": float(row["score"]), "top_k": top}  # fmt: skip
            if "labels" in row:
                record["labels"] = [x for x in (row["labels"] or "").split(";") if x]
            out.append(record)
        return out
    lines = data.splitlines()
    if fmt == "json" and lines and lines[0] == b"[":
        lines = [line.rstrip(b",") for line in lines[1:]]
    return [json.loads(line) for line in lines if line.strip()]


def leftover_temporaries(target: Path) -> list[Path]:
    """Hidden temporary files of runs killed before this side file existed (``.FILE.xxxx.tmp``)."""
    try:
        return sorted(p for p in target.parent.glob(f".{target.name}.*.tmp") if p.is_file())
    except OSError:
        return []


def folder_progress(folder: Path, fmt: str, resume: bool) -> set[str]:
    """The Ray engine's output folder: the inputs it holds records of (``--resume``), every whole
    record counted once. A block file cut short by a kill keeps its whole lines (JSON Lines; a
    Parquet file without its footer is removed, its inputs done again), with a note. Without
    ``--resume``, a folder that holds records already is refused: runs never mix silently."""
    import logging

    suffix = ".parquet" if fmt == "parquet" else ".jsonl"
    files = sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []
    if not files:
        return set()
    if not resume:
        raise UsageError(
            f"{folder} holds {len(files)} record files already: add --resume to go on with that run, "
            "or give an empty folder"
        )
    from ..image.video import unit_key

    log, done = logging.getLogger("zeroshot"), set[str]()
    for f in files:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(f)
                cols = ["path", "time"] if "time" in table.column_names else ["path"]
                done.update(unit_key(r) for r in table.select(cols).to_pylist())
            except Exception:  # noqa: BLE001 - no footer, cut short: any reader error means the same
                f.unlink()
                log.warning(f"{f.name} was cut short by the interruption: removed, its inputs are classified again")
            continue
        data = f.read_bytes()
        lines = data.split(b"\n")
        whole, torn = [], lines[-1] != b""
        for line in lines[:-1]:
            try:
                done.add(unit_key(json.loads(line)))
                whole.append(line)
            except (ValueError, KeyError, TypeError):
                torn = True
        if torn:
            tmp = f.with_name(f".{f.name}.tmp")
            tmp.write_bytes(b"".join(line + b"\n" for line in whole))
            os.replace(tmp, f)
            log.warning(f"{f.name} was cut short by the interruption: its {len(whole)} whole records are kept")
    return done
