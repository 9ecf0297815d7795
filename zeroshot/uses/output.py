"""Writing classify records: JSON Lines (default), a JSON array, CSV or a table, to stdout or a file.

JSON Lines and CSV stream, one line per record as it is produced; a JSON array streams too and is
valid once the run ends; the table is drawn at the end. ``--output FILE`` (a
:class:`~zeroshot.base.files.Destination`) writes a regular file through a temporary file beside it,
renamed into place when the run ends, so FILE is never half-written (an interrupted run leaves the
old FILE, or none, and no temporary file); a FIFO, a device or ``/dev/fd/N`` gets each record as
it is made, like stdout.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import IO, TYPE_CHECKING, Any, cast

from .ranking import Record

if TYPE_CHECKING:
    from ..base.files import Destination
    from .resume import PartialOutput


class Format(str, Enum):
    """``--format`` for the local engine."""

    JSONL = "jsonl"
    JSON = "json"
    CSV = "csv"
    TABLE = "table"


FORMATS = tuple(f.value for f in Format)
CSV_COLUMNS = ["path", "label", "score", "error", "top_k"]
# What a file name's extension says its records are (a table has none of its own); the Ray
# engine's folders may be named for theirs too (``out.parquet/``).
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def format_named(path: str | os.PathLike[str] | None) -> str | None:
    """The format a known extension of ``path`` names (case aside), or None: no path, ``-``, or an
    extension that says nothing (``.txt``, ``.gz``, none)."""
    if path is None:
        return None
    return EXTENSIONS.get(os.path.splitext(os.fspath(path))[1].lower())


@dataclass
class Tally:
    """What a run's records stand for, counted as they are written: inputs (an image, a file that
    could not be read, a video whatever its sampled frames) and video frames, and how many of each
    could not be classified. A video's frames are consecutive records of its path with rising times,
    so the same video named twice in a row is two inputs."""

    inputs: int = 0
    failed: int = 0  # inputs whose one record is an error (an image, a video that could not be read)
    frames: int = 0
    failed_frames: int = 0
    video: tuple[str, float] | None = None  # the last frame's path and time: its video goes on from there

    def add(self, record: Record | dict[str, Any]) -> None:
        time = record.get("time")
        if time is None:
            self.inputs += 1
            self.failed += "error" in record
            self.video = None
            return
        if self.video is None or self.video[0] != record["path"] or time <= self.video[1]:
            self.inputs += 1  # a video's first frame
        self.video = (record["path"], float(time))
        self.frames += 1
        self.failed_frames += "error" in record

    @property
    def any_failed(self) -> bool:
        return bool(self.failed or self.failed_frames)

    def line(self) -> str:
        """``3 of 6 inputs could not be classified`` (and video frames, counted apart, when some failed)."""
        parts = [f"{self.failed:,} of {self.inputs:,} inputs"] if self.failed or not self.failed_frames else []
        if self.failed_frames:
            parts.append(f"{self.failed_frames:,} of {self.frames:,} video frames")
        return " and ".join(parts) + " could not be classified"

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "failed": self.failed, "frames": self.frames,
                "failed_frames": self.failed_frames, "video": list(self.video) if self.video else None}  # fmt: skip

    @classmethod
    def kept(cls, data: dict[str, Any] | None, records: int, errors: int) -> Tally:
        """A side file's tally from its mark; a mark of an older version (or one without it) counts
        records only, and each then stands for one input."""
        try:
            return cls.from_dict(data or {})
        except (KeyError, TypeError, ValueError, IndexError):
            return cls(records, errors)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        video = data.get("video")
        return cls(int(data["inputs"]), int(data["failed"]), int(data["frames"]), int(data["failed_frames"]),
                   (str(video[0]), float(video[1])) if video else None)  # fmt: skip


def apply_min_score(record: Record, min_score: float | None) -> Record:
    """``label`` becomes None when the best score is under ``min_score`` (the record keeps its top-k)."""
    if min_score is not None and "error" not in record and record["score"] < min_score:
        return {**record, "label": None}
    return record


def write_all(out: IO[bytes], data: bytes) -> None:
    """Write every byte of ``data``. Unbuffered stdout (``python -u``, ``PYTHONUNBUFFERED``) is a raw
    file whose ``write`` may take only part (a pipe whose reader left mid-write): the rest is written
    again, and a reader that has gone raises BrokenPipeError (exit 141) instead of being lost."""
    view = memoryview(data)
    while view:
        written = out.write(view)
        if written is None:  # a non-blocking stream that is full: wait until it takes more
            import select

            select.select([], [out.fileno()], [])
            continue
        view = view[written:]


def _json_line(record: Record | dict[str, Any]) -> bytes:
    try:
        return json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not valid UTF-8: escape it instead
        return json.dumps(record, ensure_ascii=True).encode("ascii")


class RecordWriter:
    """Writes records in one format to a :class:`~zeroshot.base.files.Destination` or to stdout."""

    def __init__(
        self,
        fmt: str,
        dest: Destination | None = None,
        *,
        multi_label: bool = False,
        width: int | None = None,
        partial: PartialOutput | None = None,
        frames: bool = False,
    ) -> None:
        """``partial``: a regular FILE's side file (:mod:`zeroshot.uses.resume`): records are held per
        batch and appended at :meth:`batch_done`; a resumed one goes on after the records it holds."""
        if fmt not in FORMATS:
            from ..base.errors import UsageError

            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.fmt = fmt
        self.multi_label = multi_label
        self.width = width  # the table's width (None: as wide as its rows need)
        self.count = 0
        self.rows: list[Record] = []
        self.file = None
        self.dest = dest
        self.partial = partial
        self.held = bytearray()  # this batch's bytes, for the side file
        self.held_paths: list[str] = []
        self.held_errors = 0
        self.tally = Tally()  # every record of the run, a resumed run's kept ones included
        self.out = sys.stdout.buffer
        self.flush_each = True
        if partial is not None:  # bytes are held per batch (_emit), then go to the side file
            self.flush_each = False
            self.count = partial.records
            self.rows = [cast(Record, r) for r in partial.kept]
            self.tally = Tally.kept(partial.tally, partial.records, partial.errors)
        elif dest is not None and not dest.stdout:
            self.file = dest.open()
            self.out = self.file.stream
            self.flush_each = self.file.flush_each
        # CSV: a video frame's time and number in columns of their own when the run was asked about
        # videos; otherwise (a video met in a folder) its time goes in the path as a media fragment.
        self.frames = frames
        if fmt == "csv" and self.count == 0:
            self._csv_row(CSV_COLUMNS + (["labels"] if multi_label else []) + (["time", "frame"] if frames else []))

    def _csv_row(self, values: list[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        self._emit(buf.getvalue().encode("utf-8", "backslashreplace"))

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write that fails (a full disk, a file over the size limit) is one OutputError naming
        where the records go; a reader that went away stays a BrokenPipeError (exit 141, quietly)."""
        try:
            yield
        except BrokenPipeError:
            raise
        except OSError as e:
            from ..base.errors import OutputError

            where = self.dest.named if self.dest is not None and not self.dest.stdout else "the records to stdout"
            raise OutputError(f"cannot write {where}: {e.strerror or e}") from None

    def _emit(self, data: bytes) -> None:
        if self.partial is not None:
            self.held += data
            return
        write_all(self.out, data)
        if self.flush_each:
            self.out.flush()

    def batch_done(self) -> None:
        """The records of one model batch are all written: into the side file with them."""
        if self.partial is not None and (self.held or self.held_paths):
            self.partial.tally = self.tally.to_dict()  # what the mark counts: the records up to here
            with self._writing():
                self.partial.append_batch(bytes(self.held), self.held_paths, self.held_errors)
            self.held, self.held_paths, self.held_errors = bytearray(), [], 0

    def write(self, record: Record) -> None:
        with self._writing():
            self._write(record)

    def _write(self, record: Record) -> None:
        self.tally.add(record)
        if self.partial is not None:
            self.held_paths.append(record["path"])
            self.held_errors += "error" in record
        if self.fmt == "jsonl":
            self._emit(_json_line(record) + b"\n")
        elif self.fmt == "json":
            self._emit((b"[\n" if self.count == 0 else b",\n") + _json_line(record))
        elif self.fmt == "csv":
            top = json.dumps(record.get("top_k", []), ensure_ascii=False) if "top_k" in record else ""
            label = record.get("label")
            path = record["path"]
            if "time" in record and not self.frames:
                path = f"{path}#t={record['time']}"  # W3C media fragment: clip.mp4#t=12.5
            row = [
                path,
                "" if label is None else label,
                record.get("score", ""),
                record.get("error", ""),
                top,
            ]
            if self.multi_label:  # the present labels, ';'-separated (a label with ';' is quoted by csv)
                row.append(";".join(record.get("labels", [])))
            if self.frames:
                row += [record.get("time", ""), record.get("frame", "")]
            self._csv_row(row)
        else:
            self.rows.append(record)
            if self.partial is not None:  # a table's side file holds JSON Lines: it is drawn at the end
                self._emit(_json_line(record) + b"\n")
        self.count += 1

    def close(self) -> None:
        """Finish the output (closing bracket, table) and move the file into place."""
        self.batch_done()
        with self._writing():
            self._close()

    def _close(self) -> None:
        if self.fmt == "json":
            self._emit(b"[]\n" if self.count == 0 else b"\n]\n")
        if self.partial is not None:
            if self.fmt == "table":  # drawn from every record, the side file's included, into FILE
                assert self.dest is not None
                self.file = self.dest.open()
                self.out, self.held, partial, self.partial = self.file.stream, bytearray(), self.partial, None
                self._table()
                self.file.commit()
                self.file = None
                partial.finish(b"", rename=False)
            else:
                closing, self.held = bytes(self.held), bytearray()
                partial, self.partial = self.partial, None
                partial.finish(closing, rename=True)
            return
        if self.fmt == "table":
            self._table()
        if self.file is not None:
            self.file.commit()
        else:
            self.out.flush()

    def abort(self) -> str | None:
        """An interrupted or failed run: a side file keeps the whole batches written so far (the line
        that says so is returned); any other output file half-written is dropped. A no-op after
        :meth:`close`."""
        if self.partial is not None:
            partial, self.partial = self.partial, None
            return partial.keep()
        if self.file is not None:
            self.file.discard()
        return None

    def _table(self) -> None:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Column, Table

        # Paths, labels and messages are data: escaped, so "[red]" in a file name is printed as is.
        # A path is never cut short (two files must never look alike): too long, it folds onto more lines.
        path_column = Column("path", overflow="fold")
        table = Table(path_column, "labels" if self.multi_label else "label", "score", "next best")
        for r in self.rows:
            where = escape(r["path"]) + (f" [dim]@ {r['time']:g} s[/dim]" if "time" in r else "")  # a video frame
            if "error" in r:
                table.add_row(where, "[red]error[/red]", "", escape(r["error"]))
                continue
            shown = list(r.get("labels", [])) if self.multi_label else [r["label"]] if r["label"] is not None else []
            # "next best": the best labels not shown in the label column, so the best guess is always
            # somewhere (under --min-score, a record with no label shows its top entries here).
            others = [t for t in r["top_k"] if t["label"] not in shown][:2]
            rest = ", ".join(f"{t['label']} {t['score']:.3f}" for t in others)
            none = "none over the threshold" if self.multi_label else "none of these"
            table.add_row(where, escape(", ".join(shown)) or f"[dim]{none}[/dim]", f"{r['score']:.4f}",
                          escape(rest))  # fmt: skip
        buf = io.StringIO()
        # At a terminal, its width (long paths fold); elsewhere, as wide as the rows need.
        Console(file=buf, width=self.width or 100_000, force_terminal=False, color_system=None).print(table)
        text = "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
        self._emit(text.encode("utf-8"))
