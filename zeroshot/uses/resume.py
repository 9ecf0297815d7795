"""Long runs that survive interruption: ``classify -o FILE`` keeps its records as it makes them,
and ``--resume`` goes on from there.

The records go to a side file, ``FILE.partial``, which holds exactly the bytes FILE will hold
(for ``--format table``, JSON Lines: a table is drawn at the end). A second side file,
``FILE.partial.json`` (the mark), says how far the run got: the records and bytes of whole
batches, a digest of their inputs' paths, the run's key (model, labels, options), its segments and
what its records stand for (a :class:`~zeroshot.uses.output.Tally`). A fresh run creates both before
its first batch. Each model batch is appended with one write and synced to the disk; then the mark
that counts it is written to a temporary file of its own, synced, and renamed over the old mark. So
a mark never counts bytes that a power cut can take back, and an interruption of any kind (a kill,
a crash, a power cut) costs at most the batch in hand. When the run ends, FILE.partial is renamed
to FILE (taking the mode and owner of a FILE it replaces) and the mark goes.

A resumed run cuts FILE.partial back to the last whole batch, checks the key and the inputs it
holds, skips those inputs without decoding them, and continues. Its batches are then the
uninterrupted run's batches, so the final FILE is byte for byte the file one run would have
written. While a run writes, it holds a lock on FILE.partial: a second run with the same FILE
is refused instead of mixing records.

The side files are this module's own: they are created exclusively and opened without following
symlinks, and anything else found under their names (a symlink, a FIFO, a file with other hard
links, a side file whose mark is missing or unreadable) is refused, never written through, truncated
or removed. The Ray engine's output folder has a mark of its own (:class:`BlockFolder`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from ..base.errors import UsageError
from ..base.files import Destination, _sync_folder, atomic_write_bytes, create_new, take_place_of

MAGIC = "zeroshot partial output"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def side_files(target: Path) -> tuple[Path, Path]:
    """FILE.partial (the records so far) and FILE.partial.json (how far they go)."""
    return target.with_name(target.name + ".partial"), target.with_name(target.name + ".partial.json")


def shown_side_files(dest: Destination) -> tuple[str, str]:
    """The side files as messages name them: beside FILE as the user wrote it, unless FILE is a
    symlink (the side files are then beside its target, and named where they are)."""
    given = Path(dest.given)
    if given.parent.resolve() / given.name != dest.target:
        return tuple(str(p) for p in side_files(dest.target))  # type: ignore[return-value]
    return str(given.with_name(given.name + ".partial")), str(given.with_name(given.name + ".partial.json"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _path_bytes(path: str) -> bytes:
    return os.fsencode(path) + b"\0"  # any name, undecodable bytes too, and no two lists alike


def _not_ours(st: os.stat_result) -> str | None:
    """What a file found under a side file's name is, when it cannot be one this module made."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "a file with other hard links" if st.st_nlink > 1 else None
    kinds = ((stat.S_ISLNK, "a symlink"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISSOCK, "a socket"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "a device")


def _check_kind(path: Path, shown: str) -> os.stat_result | None:
    """The side file's status (None: there is none); UsageError when something else sits there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    kind = _not_ours(st)
    if kind is not None:
        raise UsageError(f"{shown} is {kind} where this run keeps its side file: move it away "
                         "(what it points to is left alone), or give another --output")  # fmt: skip
    return st


def _read_meta(meta: Path) -> tuple[dict[str, Any] | None, str]:
    """The mark and "ok", or None and why: "missing" or "unreadable" (not JSON, not a mark, cut
    short, or a field missing). Read without following a symlink or waiting on a FIFO."""
    try:
        fd = os.open(meta, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None, "missing"
    except OSError:
        return None, "unreadable"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None, "unreadable"
        with open(fd, "rb", closefd=False) as f:
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None, "unreadable"
    finally:
        os.close(fd)
    fields = {"key": dict, "records": int, "bytes": int, "errors": int, "paths_sha256": str, "segments": list}
    if not isinstance(data, dict) or data.get("format") != MAGIC:
        return None, "unreadable"
    if any(not isinstance(data.get(name), kind) for name, kind in fields.items()):
        return None, "unreadable"
    if not data["segments"] or not all(isinstance(segment, dict) for segment in data["segments"]):
        return None, "unreadable"
    return data, "ok"


def count_records(f: IO[bytes], fmt: str) -> int:
    """How many records a side file holds, whole or not, read as a stream: its lines (JSON Lines, a
    table's, a JSON array's less its brackets), or for CSV the rows after the header."""
    if fmt == "csv":
        import csv
        import io

        rows = csv.reader(io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline=""))
        return max(0, sum(1 for row in rows if row) - 1)
    return sum(1 for line in f if line.strip() not in (b"", b"[", b"]"))


def _locked_by_another(path: Path) -> bool:
    """Whether a running process holds FILE.partial's lock (a run writing it right now)."""
    try:
        import fcntl
    except ImportError:  # no flock here (Windows): no protection against two runs, as before
        return False
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def check_before_run(records: Destination | None, resume: bool, fmt: str = "jsonl") -> dict[str, Any] | None:
    """Before anything loads: ``--resume`` needs a regular ``--output`` FILE; a side file left by
    an interrupted run is never overwritten (nor silently kept) by a run without ``--resume``; and
    one without a readable mark is refused whatever the run (nothing says which command made its
    records, nor where its last whole batch ends). Returns the mark of records a run can go on
    from (with ``resume``), or None to start afresh: nothing is there, or nothing was kept."""
    if records is None or not records.regular:
        if resume:
            where = "stdout" if records is None else records.named
            raise UsageError(f"--resume needs --output FILE: records sent to {where} cannot be picked up again")
        return None
    side, meta = side_files(records.target)
    shown, shown_meta = shown_side_files(records)
    found = _check_kind(side, shown)
    _check_kind(meta, shown_meta)
    if found is None:
        return None
    if _locked_by_another(side):
        raise UsageError(f"another zeroshot run is writing {records.given} right now (its records so far: {shown})")
    data, why = _read_meta(meta)
    if data is None:
        if found.st_size == 0:
            return None  # killed as it made its side file: nothing in it
        with open(os.open(side, os.O_RDONLY | _NOFOLLOW | _CLOEXEC), "rb") as f:
            n = count_records(f, "jsonl" if fmt == "table" else fmt)
        raise UsageError(
            f"{shown} holds {found.st_size:,} bytes ({n:,} records) but its mark {shown_meta} is {why}, so nothing "
            f"says which command made them or where they end: {'delete both' if why != 'missing' else 'delete it'} "
            "to start over"
        )
    if not data["records"]:
        return None  # nothing kept in it (killed before its first batch): this run starts it again
    if resume:
        return data
    raise UsageError(
        f"{shown} holds {data['records']:,} records of an interrupted run (started "
        f"{data['segments'][0].get('started', '?')}): "
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


def key_difference(was: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What differs between two runs' keys, as a message says it ("labels, prompts or text
    classifier and --top-k (5, now 2)"), or None when they are the same run. A field only one of
    them has differs too."""
    differ = [field for field in sorted(set(was) | set(now)) if was.get(field, NOT_GIVEN) != now.get(field, NOT_GIVEN)]
    if "image" in differ and "text" in differ:
        differ.remove("text")  # another model has other text embeddings too: the labels need not have changed
    # the identities and digests say only that they changed; an option says from what to what
    said = [KEY_WORDS.get(f) or f"--{f.replace('_', '-')} ({was.get(f, NOT_GIVEN)!r}, now {now.get(f, NOT_GIVEN)!r})"
            for f in differ]  # fmt: skip
    return " and ".join(said) or None


class PartialOutput:
    """FILE.partial and FILE.partial.json for one run (see the module's text)."""

    def __init__(
        self, dest: Destination, key: dict[str, Any], *, resume: bool, fmt: str, read_back: bool = False
    ) -> None:
        """``fmt``: the records' format (a table's side file holds JSON Lines). ``read_back``: a
        resumed run needs the records already kept (a table, a contact sheet): :attr:`kept`."""
        self.dest = dest
        self.side, self.meta = side_files(dest.target)
        self.shown, self.shown_meta = shown_side_files(dest)
        self.key = key
        self.records = self.bytes = self.errors = 0
        self.digest = hashlib.sha256()
        self.segments: list[dict[str, Any]] = []
        self.kept: list[dict[str, Any]] = []  # the records already there (read_back, or a table)
        # What the records in the side file stand for (a Tally's dict, which the RecordWriter keeps);
        # None: a mark of an older version, which counts records only.
        self.tally: dict[str, Any] | None = None
        old = check_before_run(dest, resume, fmt)  # again: a library caller may not have asked
        self.fd = self._open(existing=old is not None)
        if old is not None:
            self._take_over(old, fmt if read_back or fmt == "table" else None)
        self.want_digest = old["paths_sha256"] if old is not None else None
        self.segments.append({"started": _now(), "records_before": self.records})
        os.lseek(self.fd, self.bytes, os.SEEK_SET)
        if old is None:  # a side file always has a mark, from its first byte on
            try:
                self._write_meta()
            except OSError as e:  # a full disk already: the empty side file this run made goes
                from ..base.errors import OutputError

                os.close(self.fd)
                self.side.unlink(missing_ok=True)
                raise OutputError(f"cannot write {dest.named}: {e.strerror or e}") from None
            _sync_folder(self.side.parent)

    def _open(self, *, existing: bool) -> int:
        """FILE.partial, locked: the one the mark counts (``existing``, never through a symlink),
        else a new one this run creates. A leftover in its place holds nothing (check_before_run)."""
        flags = os.O_RDWR | _NOFOLLOW | _CLOEXEC
        try:
            if not existing:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.side)  # empty, or counted as empty by its mark
                flags |= os.O_CREAT | os.O_EXCL
            fd = os.open(self.side, flags, 0o666)  # less the umask, which the kernel takes off
        except FileExistsError:
            raise UsageError(f"another zeroshot run is writing {self.dest.given} right now") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                _check_kind(self.side, self.shown)
            raise UsageError(f"{self.dest.named}: cannot write {self.shown} ({e.strerror or e})") from None
        kind = _not_ours(os.fstat(fd))
        if kind is not None:  # replaced since it was checked
            os.close(fd)
            raise UsageError(f"{self.shown} is {kind} where this run keeps its side file: move it away")
        try:
            import fcntl
        except ImportError:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UsageError(f"another zeroshot run is writing {self.dest.given} right now") from None
        return fd

    def _take_over(self, old: dict[str, Any], read_as: str | None) -> None:
        """Go on from an interrupted run's side file: same key, cut back to its last whole batch."""
        what = key_difference(old["key"], self.key)
        if what is not None:
            os.close(self.fd)
            raise UsageError(
                f"--resume: {self.shown} was made with other {what}: "
                "run it as it was, or delete the side file to start over"
            )
        size = os.fstat(self.fd).st_size
        if size < old["bytes"]:
            os.close(self.fd)
            raise UsageError(
                f"--resume: {self.shown} lost records it had (a crash of the machine?): delete it to start over"
            )
        os.ftruncate(self.fd, old["bytes"])  # a batch cut short by a kill, written past the last mark
        self.records, self.bytes, self.segments = old["records"], old["bytes"], old["segments"]
        self.errors = old["errors"]
        self.tally = old.get("tally") if isinstance(old.get("tally"), dict) else None
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
        """One batch's records (their bytes, their inputs' paths, how many are errors), synced to
        the disk, then the mark that counts them (and :attr:`tally`, as the writer set it for them)."""
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        marked = (self.bytes, self.records, self.errors, self.digest.copy())  # what the mark on disk says
        self.bytes += len(data)
        self.records += len(paths)
        self.errors += errors
        for path in paths:
            self.digest.update(_path_bytes(path))
        try:
            getattr(os, "fdatasync", os.fsync)(self.fd)  # before the mark: it never counts what could be lost
            self._write_meta()
        except OSError:
            # A full disk: the batch is not marked, so it is not kept (resume cuts back to the mark);
            # keep() then counts what the mark says, and drops a side file that has none.
            self.bytes, self.records, self.errors, self.digest = marked
            raise

    def _write_meta(self) -> None:
        """The mark, whole: a temporary file of a fresh name (created exclusively, so never another
        file nor a symlink's target), synced, then renamed over the old mark."""
        data = {"format": MAGIC, "output": str(self.dest.target), "key": self.key, "records": self.records,
                "errors": self.errors, "bytes": self.bytes, "paths_sha256": self.digest.hexdigest(),
                "segments": self.segments, "tally": self.tally, "pid": os.getpid()}  # fmt: skip
        atomic_write_bytes(self.meta, json.dumps(data, ensure_ascii=True).encode("ascii"), shared=True,
                           sync_folder=False)  # fmt: skip

    def finish(self, closing: bytes, *, rename: bool) -> None:
        """The run is complete: FILE.partial becomes FILE (``rename``, with the mode and owner of a
        FILE it replaces; a table was written to FILE on its own), and the side files go."""
        if closing:
            self.append_batch(closing, [])
        self.segments[-1].update(ended=_now(), records_after=self.records)
        if rename:
            take_place_of(self.fd, self.dest.target)
        os.fsync(self.fd)
        os.close(self.fd)
        if rename:
            os.replace(self.side, self.dest.target)
        else:
            self.side.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
        _sync_folder(self.dest.target.parent)

    def keep(self) -> str | None:
        """The run stops early: what it made is kept for ``--resume`` (the batch in hand is not:
        it was never written). Returns the line that says so, or None when nothing was kept."""
        self.segments[-1].update(ended=_now(), records_after=self.records, interrupted=True)
        with contextlib.suppress(OSError):
            os.fsync(self.fd)
        if self.records == 0:  # this run made both (a resumed one starts with records)
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


# --- the Ray engine's output folder --------------------------------------------------------------

RAY_MARK = "_zeroshot-ray.json"  # "_": readers of a Parquet or JSON folder (pyarrow, Spark) pass over it
RAY_MAGIC = "zeroshot ray output"
BLOCK_PREFIX = "zeroshot-"
_BLOCK = re.compile(r"^zeroshot-([0-9a-f]{12})-[^/]+\.(jsonl|parquet)$")


class BlockFolder:
    """The Ray engine's output folder (``-o DIR``). Each run writes block files named
    ``zeroshot-TOKEN-...`` with a token of its own, which its mark (:data:`RAY_MARK`) lists before
    the first block is written, with the files once the run ends. Only those files are read back as
    records, mended or removed; anything else in the folder is never read, changed nor removed."""

    def __init__(self, folder: Path, fmt: str) -> None:
        self.folder, self.fmt, self.path = folder, fmt, folder / RAY_MARK
        self.segments: list[dict[str, Any]] = []
        try:
            st = os.stat(folder)  # a symlink to a folder is that folder
        except FileNotFoundError:
            return  # made with the mark, before the first block
        if not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"--output {folder} is not a folder: the Ray engine writes a folder of block files")
        self.segments = self._read()

    def _read(self) -> list[dict[str, Any]]:
        """The mark's segments (none: no mark); a mark that cannot be read is refused, since the
        block files it lists could then not be told from anyone else's."""
        if _check_kind(self.path, str(self.path)) is None:
            return []
        data: Any = None
        with contextlib.suppress(OSError, ValueError), open(os.open(self.path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC),
                                                            "rb") as f:  # fmt: skip
            data = json.loads(f.read().decode("utf-8"))
        segments = data.get("segments") if isinstance(data, dict) and data.get("format") == RAY_MAGIC else None
        if not isinstance(segments, list) or not all(isinstance(s, dict) and "token" in s for s in segments):
            raise UsageError(f"{self.path} is unreadable, so nothing says which files in {self.folder} are "
                             "records of this engine: give an empty folder")  # fmt: skip
        return segments

    def _write(self) -> None:
        data = json.dumps({"format": RAY_MAGIC, "segments": self.segments}, indent=1).encode("utf-8")
        atomic_write_bytes(self.path, data, shared=True)

    def _entries(self) -> tuple[list[Path], list[str]]:
        """This engine's block files (regular files named with a token the mark lists), and the
        names of everything else (hidden names and the mark aside)."""
        tokens = {s["token"] for s in self.segments}
        ours, others = [], []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in sorted(os.scandir(self.folder), key=lambda e: e.name):
                match = _BLOCK.match(entry.name)
                if match and match.group(1) in tokens and entry.is_file(follow_symlinks=False):
                    ours.append(Path(entry.path))
                elif not entry.name.startswith(".") and entry.name != RAY_MARK:
                    others.append(entry.name)
        return ours, others

    def blocks(self) -> list[Path]:
        """The block files in this run's format; a folder without a mark (an older version's) has
        every file with the format's extension read back instead."""
        if not os.path.lexists(self.path):
            return sorted(self.folder.glob(f"*.{self.fmt}")) if self.folder.is_dir() else []
        return [p for p in self._entries()[0] if p.suffix == f".{self.fmt}"]

    def begin(self) -> str:
        """A new run into the folder: its token, in the mark before any block file is written."""
        import secrets

        token = secrets.token_hex(6)
        self.segments.append({"token": token, "format": self.fmt, "started": _now()})
        self._write()
        return token

    def end(self, token: str) -> None:
        """The run ``token`` wrote every block: its files, listed in the mark."""
        names = [p.name for p in self._entries()[0] if p.name.startswith(f"{BLOCK_PREFIX}{token}-")]
        for segment in self.segments:
            if segment["token"] == token:
                segment.update(ended=_now(), files=names)
        self._write()

    def progress(self, resume: bool, *, notes: bool = True) -> set[str]:
        """The inputs the folder holds records of (``resume``), every whole record counted once;
        without ``resume``, a folder holding this engine's records is refused (runs never mix
        silently). Files the engine did not write are named in a warning and left alone."""
        import logging

        ours, others = self._entries()
        log = logging.getLogger("zeroshot")
        if notes and others:
            names = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            log.warning(f"{self.folder} holds files this engine did not write: {names} (left as they are, "
                        "not read as records)")  # fmt: skip
        if ours and not resume:
            raise UsageError(f"{self.folder} holds {len(ours)} record files of an earlier run already: add --resume "
                             "to go on with that run, or give an empty folder")  # fmt: skip
        other_format = sorted({p.suffix[1:] for p in ours} - {self.fmt})
        if other_format:
            raise UsageError(f"--resume: {self.folder} holds {other_format[0]} records: go on with --format "
                             f"{other_format[0]}")  # fmt: skip
        done: set[str] = set()
        for f in ours:
            done |= _mend_block(f, self.fmt, log)
        return done


def _mend_block(f: Path, fmt: str, log: Any) -> set[str]:
    """The inputs one of the engine's own block files holds whole records of. One cut short by a
    kill keeps its whole lines (JSON Lines, rewritten); a Parquet file without its footer is
    removed, and its inputs are classified again."""
    from ..image.video import unit_key

    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(f)
            cols = ["path", "time"] if "time" in table.column_names else ["path"]
            return {unit_key(r) for r in table.select(cols).to_pylist()}
        except Exception:  # noqa: BLE001 - no footer, cut short: any reader error means the same
            f.unlink()
            log.warning(f"{f.name} was cut short by the interruption: removed, its inputs are classified again")
            return set()
    lines = f.read_bytes().split(b"\n")
    done, whole, torn = set(), [], lines[-1] != b""
    for line in lines[:-1]:
        try:
            done.add(unit_key(json.loads(line)))
            whole.append(line)
        except (ValueError, KeyError, TypeError):
            torn = True
    if torn:
        fd, tmp = create_new(f.parent, f".{f.name}.")
        with os.fdopen(fd, "wb") as out:
            out.write(b"".join(line + b"\n" for line in whole))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, f)
        log.warning(f"{f.name} was cut short by the interruption: its {len(whole)} whole records are kept")
    return done


def folder_progress(folder: Path, fmt: str, resume: bool, *, notes: bool = True) -> set[str]:
    """:meth:`BlockFolder.progress` of ``folder``: the inputs a resumed Ray run leaves out."""
    return BlockFolder(folder, fmt).progress(resume, notes=notes)
