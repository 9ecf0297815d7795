"""``zeroshot models``, ``datasets`` and ``cache``: what is available and stored."""

from __future__ import annotations

import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..base.errors import UsageError
from ..model.catalog import SortKey
from .app import app, handle_errors
from .common import write_record


@app.command()
@handle_errors
def models(
    sort: Annotated[
        SortKey, typer.Option("--sort", help="params, size and gflops: smallest first; top1: best first.")
    ] = SortKey.MODEL,
    family: Annotated[
        str | None, typer.Option("--family", help="Only families whose name contains this (SigLIP, PE-Core, ...).")
    ] = None,
    untagged: Annotated[bool, typer.Option("--all", help="Also architectures without pretrained weights.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per model and tag, for scripts.")] = False,
) -> None:
    """Choose a model: family, parameters, input size, extra packages, published ImageNet top-1 and GFLOPs."""
    from ..model.catalog import RESULTS_SOURCE, catalog, sort_rows

    rows = catalog(untagged=untagged)
    if family:
        rows = [r for r in rows if family.lower() in r.family.lower()]
        if not rows:
            raise UsageError(f"no family matches '{family}'; `zeroshot models` lists them")
    rows = sort_rows(rows, sort.value) if sort is not SortKey.MODEL else rows
    if as_json:
        for row in rows:
            write_record(row.record())
        sys.stdout.flush()
        return

    def cell(value: float | int | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    columns = ("model", "pretrained", "family", "params (M)", "input", "GFLOPs", "ImageNet top-1", "needs")
    table_rows = [
        (r.model, r.pretrained or "-", r.family, cell(r.params_m, ".1f"), cell(r.image_size, "d"),
         cell(r.gflops, ".1f"), cell(r.imagenet_top1 and 100 * r.imagenet_top1, ".1f"), ", ".join(r.needs) or "-")
        for r in rows
    ]  # fmt: skip
    if not sys.stdout.isatty():  # tab-separated lines for pipes and pagers
        for line in [columns, *table_rows]:
            sys.stdout.write("\t".join(line) + "\n")
        sys.stdout.flush()
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{len(rows)} models (zeroshot classify -m MODEL -p PRETRAINED)")
    for i, name in enumerate(columns):
        table.add_column(name, justify="right" if 3 <= i <= 6 else "left")
    for line in table_rows:
        table.add_row(*(escape(c) for c in line))
    table.caption = (
        f"ImageNet top-1 and GFLOPs as published in {RESULTS_SOURCE} ('-': not published there); "
        "params counted from open_clip's configs. 'transformers, sentencepiece': pip install 'transformers>=4.40' "
        "'sentencepiece>=0.2'"
    )
    Console().print(table)


@app.command()
@handle_errors
def datasets(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per dataset, for scripts.")] = False,
) -> None:
    """List the bundled prompt packs (for --dataset): classes, templates, description."""
    from ..text.prompts import datasets as bundled

    packs = bundled()
    if as_json:
        for p in packs:
            write_record(
                {
                    "name": p.name,
                    "classes": len(p.classes),
                    "templates": len(p.templates),
                    "prompts": p.prompt_count(),
                    "classes_with_own_prompts": len(p.specs_data()),
                    "description": p.description,
                    "source": p.source,
                    "aliases": list(p.aliases),
                    "file": p.origin,
                }
            )
        return
    columns = ("name", "classes", "templates", "description")
    rows = [(p.name, str(len(p.classes)), str(len(p.templates)), p.description) for p in packs]
    if not sys.stdout.isatty():  # tab-separated lines for pipes and pagers
        for row in [columns, *rows]:
            sys.stdout.write("\t".join(row) + "\n")
        sys.stdout.flush()
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(*columns, title=f"{len(packs)} prompt packs (zeroshot classify --dataset NAME)")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    Console().print(table)


class CacheAction(str, Enum):
    SHOW = "show"
    CLEAR = "clear"


# Each kind of file in the cache folder (zeroshot.base.cache.KINDS): its name in a table, many and one.
KIND_NAMES = {
    "text-classifier": ("text classifiers", "text classifier"),
    "onnx-engine": ("CPU engine exports", "CPU engine export"),
    "image-embeddings": ("image embeddings", "image-embedding database"),
    "checkpoint-hash": ("checkpoint hashes", "checkpoint hash"),
    "lock": ("locks", "lock"),
    "unfinished-write": ("unfinished writes", "unfinished write"),
    "other": ("other (not zeroshot's)", "other"),
}
# Where each kind lives in the cache folder ("" for anywhere).
KIND_FOLDERS = {"text-classifier": "text", "onnx-engine": "onnx", "image-embeddings": "images",
                "checkpoint-hash": "hashes", "lock": "onnx", "unfinished-write": "", "other": ""}  # fmt: skip


@app.command("cache")
@handle_errors
def cache_cmd(
    action: Annotated[CacheAction, typer.Argument(help="What to do.")] = CacheAction.SHOW,
    clear: Annotated[
        bool, typer.Option("--clear", help="Delete every file zeroshot made in the cache folder (same as 'clear').")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Show what the cache folder holds, by kind (text classifiers, CPU engine exports, image
    embeddings, checkpoint hashes, locks, unfinished writes, other files), or clear it: every
    file zeroshot made there is deleted; others are left and named."""
    from ..base import cache

    root = cache.cache_dir()
    if clear or action is CacheAction.CLEAR:
        _clear(root)
        return
    entries = [_entry_record(root, e) for e in cache.inventory()]
    kinds = [_kind_record(root, kind, [e for e in entries if e["kind"] == kind]) for kind in cache.KINDS]
    files, size = sum(k["files"] for k in kinds), sum(k["bytes"] for k in kinds)
    if as_json:
        write_record({"cache_dir": str(root), "files": files, "bytes": size, "kinds": kinds, "entries": entries})
        return
    _show_table(root, files, size, kinds, entries)


def _clear(root: Path) -> None:
    from ..base import cache
    from .common import human_size

    done = cache.clear()
    left = [{"path": str(p), "bytes": n, "why": why} for p, n, why in done.left]
    write_record({"cache_dir": str(root), "removed": done.removed, "bytes_freed": done.freed, "left": left})
    for why in dict.fromkeys(why for _, _, why in done.left):  # one line per reason, in order
        items = [(path, n) for path, n, said in done.left if said == why]
        names = [_relative(root, path) for path, _ in items]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        size = human_size(sum(n for _, n in items))
        what = "that zeroshot did not make" if why == cache.NOT_OURS else why.replace(" it ", " them ", 1)
        files = f"{len(items)} file" + ("s" if len(items) != 1 else "")
        sys.stderr.write(f"zeroshot: note: left {files} ({size}) {what}: {shown}\n")
    sys.stderr.flush()


def _relative(root: Path, path: Path) -> str:
    return str(path.relative_to(root)) if root in path.parents else str(path)


def _entry_record(root: Path, entry: Any) -> dict[str, Any]:
    """One entry of ``cache show --json``: kind, path, files, bytes, last change, and what its kind
    tells (a text classifier's metadata fields as they always were, an engine's description)."""
    import time

    modified = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(entry.modified))
    record: dict[str, Any] = {"kind": entry.kind, "path": str(entry.path), "files": len(entry.files),
                              "bytes": entry.size, "modified": modified}  # fmt: skip
    if entry.kind == "text-classifier":
        record["file"] = str(entry.path)
        record.update({k: _typed(k, v) for k, v in entry.meta.items() if k not in ("key", "scoring")})
        if entry.problem:
            record["problem"] = entry.problem
    elif entry.kind == "onnx-engine":
        from ..towers.onnxexport import describe

        record.update(describe(entry.path))
    elif entry.kind == "other":
        import stat

        mode = entry.files[0][1].st_mode
        record["type"] = ("link" if stat.S_ISLNK(mode) else "file" if stat.S_ISREG(mode) else
                          "folder" if stat.S_ISDIR(mode) else "special file")  # fmt: skip
    return record


def _kind_record(root: Path, kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    folder = KIND_FOLDERS[kind]
    return {"kind": kind, "folder": str(root / folder) if folder else str(root), "entries": len(entries),
            "files": sum(e["files"] for e in entries), "bytes": sum(e["bytes"] for e in entries)}  # fmt: skip


def _entry_row(root: Path, e: dict[str, Any]) -> tuple[str, ...]:
    """kind, date, name, model, detail, bytes, path: one line of the table, whatever the kind."""
    kind = e["kind"]
    name = model = detail = "-"
    date = e.get("created") or e["modified"]
    if kind == "text-classifier":
        name, model = e.get("name", e.get("problem", "?")), e.get("model", "?")
        detail = f"{e.get('classes', '?')} classes, {e.get('templates', '?')} templates"
    elif kind == "onnx-engine":
        name, model = f"{e.get('tower', '?')} tower", f"{e.get('model', '?')} ({e.get('weights', '?')})"
        detail = e.get("problem") or f"{e.get('precision', '?')}, " + (
            f"rejected: {e['reason']}" if "reason" in e else f"exported in {e.get('seconds', '?')} s"
        )
    elif kind == "other":
        detail = e["type"]
    return (KIND_NAMES[kind][1], str(date), str(name), str(model), str(detail), str(e["bytes"]),
            _relative(root, Path(e["path"])))  # fmt: skip


def _show_table(root: Path, files: int, size: int, kinds: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
    """The kinds, then every entry: tab-separated lines (exact bytes) for pipes, tables at a terminal."""
    from .common import human_size

    present = [k for k in kinds if k["files"]]
    kind_columns = ("kind", "entries", "files", "bytes", "folder")
    kind_rows = [(KIND_NAMES[k["kind"]][0], str(k["entries"]), str(k["files"]), str(k["bytes"]),
                  KIND_FOLDERS[k["kind"]] or ".") for k in present]  # fmt: skip
    entry_columns = ("kind", "date", "name", "model", "detail", "bytes", "path")
    entry_rows = [_entry_row(root, e) for e in entries]
    if not sys.stdout.isatty():  # plain tab-separated lines for scripts and pagers
        lines: list[tuple[str, ...]] = [(f"cache dir: {root} ({size:,} bytes in {files} files)",)]
        if present:
            lines += [(), kind_columns, *kind_rows, (), entry_columns, *entry_rows]
        sys.stdout.write("".join("\t".join(line) + "\n" for line in lines))
        sys.stdout.flush()
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = Console()
    out.print(f"cache dir: {escape(str(root))} ({human_size(size)} in {files} files)", highlight=False)
    if not present:
        return
    table = Table(*kind_columns[:3], "size", kind_columns[4])
    for row in kind_rows:
        table.add_row(row[0], row[1], row[2], human_size(int(row[3])), escape(row[4]))
    out.print(table)
    table = Table(*entry_columns[:5], "size", entry_columns[6])
    for kind, date, name, model, detail, size_text, path in entry_rows:
        # at a terminal: minutes, and digests cut to 12 characters (--json and pipes have them whole)
        path = re.sub(r"([0-9a-f]{12})[0-9a-f]{52}", "\\1…", path)
        cells = (kind, date[:16].replace("T", " "), name, model, detail)
        table.add_row(*(escape(c) for c in cells), human_size(int(size_text)), escape(path))
    out.print(table)


# Cache metadata is stored as strings (safetensors metadata is str -> str); counts are numbers in
# JSON, so that `jq 'select(.classes > 5)'` compares numbers.
_COUNTS = ("classes", "templates", "prompts")


def _typed(key: str, value: str) -> str | int:
    return int(value) if key in _COUNTS and isinstance(value, str) and value.isdigit() else value
