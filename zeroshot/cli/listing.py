"""``zeroshot models``, ``datasets`` and ``cache``: what is available and stored."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated

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


@app.command("cache")
@handle_errors
def cache_cmd(
    action: Annotated[CacheAction, typer.Argument(help="What to do.")] = CacheAction.SHOW,
    clear: Annotated[bool, typer.Option("--clear", help="Delete every cache entry (same as 'clear').")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Show the cache folder and its entries, or clear them."""
    from ..base import cache

    root = cache.cache_dir()
    if clear or action is CacheAction.CLEAR:
        count, freed = cache.clear()
        write_record({"cache_dir": str(root), "removed": count, "bytes_freed": freed})
        return
    entries = cache.list_entries()
    if as_json:
        write_record(
            {
                "cache_dir": str(root),
                "entries": [
                    {
                        "file": str(e.path),
                        "bytes": e.size,
                        **{k: _typed(k, v) for k, v in e.meta.items() if k not in ("key", "scoring")},
                        **({"problem": e.problem} if e.problem else {}),
                    }
                    for e in entries
                ],
            }
        )
        return
    summary = f"cache dir: {root} ({len(entries)} entries, {sum(e.size for e in entries):,} bytes)"
    columns = ("created", "name", "model", "classes", "templates", "bytes", "file")
    rows = [
        (
            e.meta.get("created", "?"), e.meta.get("name", e.problem or "?"), e.meta.get("model", "?"),
            e.meta.get("classes", "?"), e.meta.get("templates", "?"), f"{e.size:,}", e.path.name,
        )
        for e in entries
    ]  # fmt: skip
    if not sys.stdout.isatty():  # plain tab-separated lines for scripts and pagers
        sys.stdout.write(summary + "\n")
        for row in [columns, *rows] if rows else []:
            sys.stdout.write("\t".join(row) + "\n")
        sys.stdout.flush()
        return
    from rich.console import Console
    from rich.table import Table

    out = Console()
    out.print(summary, highlight=False)
    if rows:
        table = Table(*columns)
        for row in rows:
            table.add_row(*row)
        out.print(table)


# Cache metadata is stored as strings (safetensors metadata is str -> str); counts are numbers in
# JSON, so that `jq 'select(.classes > 5)'` compares numbers.
_COUNTS = ("classes", "templates", "prompts")


def _typed(key: str, value: str) -> str | int:
    return int(value) if key in _COUNTS and isinstance(value, str) and value.isdigit() else value
