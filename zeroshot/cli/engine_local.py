"""``classify``'s local engine as the command line runs it: the engine is
:mod:`zeroshot.engines.local` (shared with the other faces); here is what the CLI adds to it: the
format a run's options name, the loading display and notes (:func:`~.common.prepare_run`), and the
progress bar over the records."""

from __future__ import annotations

import sys
from pathlib import Path

from ..base.errors import UsageError
from ..engines.local import ClassifyRun, Destinations, RayPlacement  # noqa: F401  (the commands' names for them)
from ..engines.local import classify_locally as run_locally
from ..uses.output import Tally
from .common import Steps, count_in_background, prepare_run

__all__ = ["ClassifyRun", "Destinations", "RayPlacement", "classify_locally", "record_format"]


def record_format(given: str | None, output: Path | None, *, ray: bool) -> str:
    """The records' format: ``--format`` as given, else what a known extension of ``--output`` names
    (``.jsonl``/``.ndjson``, ``.json``, ``.csv``; ``.parquet`` for the Ray engine's folder), else JSON
    Lines. Decided before anything else: the resume key holds it. A given format that disagrees
    with a known extension is said in a note; ``-o FILE.parquet`` on the local engine is refused."""
    from ..uses.output import format_named

    named = format_named(output) if output is not None and str(output) != "-" else None
    if ray and named not in ("jsonl", "parquet"):
        named = None  # a folder: only its own formats' names say anything
    if given is not None:
        if named is not None and named != given:
            sys.stderr.write(f"zeroshot: note: writing {given} to {output} as --format asks "
                             f"(its extension says {named})\n")  # fmt: skip
        return given
    if named == "parquet" and not ray:
        raise UsageError(f"--output {output}: Parquet needs --engine ray (the local engine writes jsonl, json, csv "
                         "or table: give --format to write one of them there)")  # fmt: skip
    return named or "jsonl"


def classify_locally(run: ClassifyRun) -> Tally:
    """The local engine (:func:`zeroshot.engines.local.classify_locally`) with the CLI's display."""
    return run_locally(run, prepare=prepare_run, progress=_progress)


def _progress(run: ClassifyRun) -> Steps:
    """The progress bar (for people at a terminal, without --quiet), its total counted beside the
    run (a video's sampled frames are records of their own; one per video with --per-video); paths
    from stdin cannot be counted ahead."""
    from ..image import video
    from ..image.images import count_inputs

    steps = Steps(not run.quiet and sys.stderr.isatty(), "classifying", "images")
    if "-" not in run.inputs:
        if run.per_video:
            count_in_background(steps, lambda found: count_inputs(run.inputs, found))
        else:
            count_in_background(steps, lambda found: video.count_records(run.inputs, run.video, found))
    return steps
