"""Writing classify records: JSON Lines (default), a JSON array, CSV or a table, to stdout or a file.

JSON Lines and CSV stream, one line per record as it is produced; a JSON array streams too and is
valid once the run ends; the table is drawn at the end. ``--output FILE`` (a
:class:`~zeroshot.base.files.Destination`) writes a regular file through a temporary file beside it,
renamed into place when the run ends, so FILE is never half-written (an interrupted run leaves the
old FILE, or none, and no temporary file); a FIFO, a device or ``/dev/fd/N`` gets each record as
it is made, like stdout.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

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


def apply_min_score(record: Record, min_score: float | None) -> Record:
    """``label`` becomes None when the best score is under ``min_score`` (the record keeps its top-k)."""
    if min_score is not None and "error" not in record and record["score"] < min_score:
        return {**record, "label": None}
    return record


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
        self.out = sys.stdout.buffer
        self.flush_each = True
        if partial is not None:  # bytes are held per batch (_emit), then go to the side file
            self.flush_each = False
            self.count = partial.records
            self.rows = [cast(Record, r) for r in partial.kept]
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

    def _emit(self, data: bytes) -> None:
        if self.partial is not None:
            self.held += data
            return
        self.out.write(data)
        if self.flush_each:
            self.out.flush()

    def batch_done(self) -> None:
        """The records of one model batch are all written: into the side file with them."""
        if self.partial is not None and (self.held or self.held_paths):
            self.partial.append_batch(bytes(self.held), self.held_paths, self.held_errors)
            self.held, self.held_paths, self.held_errors = bytearray(), [], 0

    def write(self, record: Record) -> None:
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
