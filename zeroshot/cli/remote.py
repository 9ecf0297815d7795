"""``zeroshot classify --server URL``: the run sent to a ``zeroshot serve``, its records printed as a
local run prints them (same formats, same exit codes), so a shell loop pays no model start-up.

Inputs are read here (folders walked, stdin paths read as they come) and sent as files by
:func:`zeroshot.client.classify_remotely`; the text side goes as the labels and templates this
command resolved (or the pack's name), so the server scores exactly what a local run would."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..base.errors import UsageError
from ..uses.output import Tally


def refuse_local_only(given: dict[str, bool]) -> None:
    """Options that choose or feed the local model (the server has its own), or that need a local
    run (a side file, a report, videos): named in one line, never silently ignored."""
    named = [flag for flag, present in given.items() if present]
    if named:
        verb = "do" if len(named) > 1 else "does"
        raise UsageError(f"{', '.join(named)} {verb} not go with --server: the server runs its own model and reads "
                         "images only; leave them out, or classify here without --server")  # fmt: skip


def classify_on_server(
    url: str,
    inputs: list[str],
    prompt_set: Any,
    *,
    dataset: str | None,
    top_k: int,
    multi_label: Any,
    min_score: float | None,
    fmt: str,
    output: Path | None,
    null: bool,
    max_bytes: int,
    timeout: float,
) -> Tally:
    """Every input's record, from the server, in input order, written as ``--format`` says."""
    from ..base.files import destination
    from ..client import classify_remotely
    from ..image.images import Pause, iter_inputs
    from ..uses.output import FORMATS, RecordWriter

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt} needs --engine ray, which does not go with --server")
    dest = destination("--output", output, allow_stdout=True) if output is not None else None
    if dest is not None and dest.stdout:
        dest = None
    stdin = sys.stdin if "-" in inputs else None
    items = (None if isinstance(i, Pause) else (i.path, i.error)
             for i in iter_inputs(inputs, stdin=stdin, null=null, live=True))  # fmt: skip
    text = _text_fields(prompt_set, dataset)
    rule = multi_label
    records: Iterator[dict[str, Any]] = classify_remotely(
        url, items, **text, top_k=top_k, multi_label=rule is not None,
        threshold=rule.threshold if rule is not None else None,
        background=rule.background if rule is not None else None,
        min_score=min_score, max_bytes=max_bytes, timeout=max(60.0, timeout),
    )  # fmt: skip
    writer = RecordWriter(fmt, dest, multi_label=rule is not None)
    try:
        for record in records:
            writer.write(record)  # type: ignore[arg-type]
        writer.close()
    finally:
        writer.abort()  # only does something if the run did not finish: no half-written --output FILE
    return writer.tally


def _text_fields(prompt_set: Any, dataset: str | None) -> dict[str, Any]:
    """The request's text: a pack alone by its name (its per-class prompts included, as the server
    holds the same packs); otherwise the classes and templates this command resolved."""
    if dataset is not None and list(prompt_set.classes) == list(_pack_classes(dataset)):
        return {"dataset": dataset}
    return {"labels": list(prompt_set.classes), "templates": list(prompt_set.templates)}


def _pack_classes(dataset: str) -> list[str]:
    from ..text.prompts import load_pack

    return list(load_pack(dataset).classes)
