"""Writing classify records: JSON Lines (default), a JSON array, CSV or a table, to stdout or a file.

JSON Lines and CSV stream, one line per record as it is produced; a JSON array streams too and is
valid once the run ends; the table is drawn at the end. ``--output FILE`` writes to a temporary
file beside FILE and renames it into place when the run ends, so FILE is never half-written (an
interrupted run leaves the old FILE, or none, and no temporary file).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import IO, Any

from .files import umask_mode
from .ranking import Record


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
    """Writes records in one format to ``path`` (atomically) or to stdout."""

    def __init__(self, fmt: str, path: str | None = None, *, multi_label: bool = False) -> None:
        if fmt not in FORMATS:
            from .errors import UsageError

            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.fmt = fmt
        self.multi_label = multi_label
        self.path = Path(path) if path else None
        self.tmp: Path | None = None
        self.count = 0
        self.rows: list[Record] = []
        if self.path is not None:
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent or ".")
            os.fchmod(fd, umask_mode())  # the records file is the user's output: usual permissions
            self.tmp = Path(name)
            self.out: IO[bytes] = os.fdopen(fd, "wb")
        else:
            self.out = sys.stdout.buffer
        if fmt == "csv":
            self._csv_row(CSV_COLUMNS + (["labels"] if multi_label else []))

    def _csv_row(self, values: list[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        self._emit(buf.getvalue().encode("utf-8", "backslashreplace"))

    def _emit(self, data: bytes) -> None:
        self.out.write(data)
        if self.path is None:
            self.out.flush()

    def write(self, record: Record) -> None:
        if self.fmt == "jsonl":
            self._emit(_json_line(record) + b"\n")
        elif self.fmt == "json":
            self._emit((b"[\n" if self.count == 0 else b",\n") + _json_line(record))
        elif self.fmt == "csv":
            top = json.dumps(record.get("top_k", []), ensure_ascii=False) if "top_k" in record else ""
            label = record.get("label")
            row = [
                record["path"],
                "" if label is None else label,
                record.get("score", ""),
                record.get("error", ""),
                top,
            ]
            if self.multi_label:  # the present labels, ';'-separated (a label with ';' is quoted by csv)
                row.append(";".join(record.get("labels", [])))
            self._csv_row(row)
        else:
            self.rows.append(record)
        self.count += 1

    def close(self) -> None:
        """Finish the output (closing bracket, table) and move the file into place."""
        if self.fmt == "json":
            self._emit(b"[]\n" if self.count == 0 else b"\n]\n")
        elif self.fmt == "table":
            self._table()
        if self.path is not None and self.tmp is not None:
            self.out.flush()
            os.fsync(self.out.fileno())
            self.out.close()
            os.replace(self.tmp, self.path)
            self.tmp = None

    def abort(self) -> None:
        """Drop a half-written output file (an interrupted or failed run)."""
        if self.tmp is not None:
            self.out.close()
            self.tmp.unlink(missing_ok=True)
            self.tmp = None

    def _table(self) -> None:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        # Paths, labels and messages are data: escaped, so "[red]" in a file name is printed as is.
        table = Table("path", "labels" if self.multi_label else "label", "score", "next best")
        for r in self.rows:
            if "error" in r:
                table.add_row(escape(r["path"]), "[red]error[/red]", "", escape(r["error"]))
                continue
            rest = ", ".join(f"{t['label']} {t['score']:.3f}" for t in r["top_k"][1:3])
            shown = ", ".join(r.get("labels", [])) if self.multi_label else r["label"]
            table.add_row(escape(r["path"]), escape(shown or "—"), f"{r['score']:.4f}", escape(rest))
        buf = io.StringIO()
        Console(file=buf, width=120, force_terminal=False, color_system=None).print(table)
        self._emit(buf.getvalue().encode("utf-8"))
