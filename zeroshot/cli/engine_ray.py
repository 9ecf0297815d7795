"""``classify --engine ray``: the text side here, once; the images on Ray Data's actors."""

from __future__ import annotations

from ..base.errors import UsageError
from ..uses.output import Tally
from .common import prepare_run, write_record
from .engine_local import ClassifyRun


def classify_on_ray(run: ClassifyRun) -> Tally:
    """``classify --engine ray``: the text classifier is made here, once; Ray's actors classify.
    Prints the run's summary record; returns what the records stand for (counted from the folder
    when some failed)."""
    from dataclasses import replace

    from ..engines.distributed import OUTPUT_FORMATS, SharedClassifier, require_ray
    from ..engines.distributed import run as ray_run

    assert run.ray is not None
    require_ray()
    if run.output is None:
        raise UsageError("--engine ray writes to a folder: give --output DIR")
    if run.fmt not in OUTPUT_FORMATS:
        raise UsageError(f"--format with --engine ray must be one of {', '.join(OUTPUT_FORMATS)}, not {run.fmt!r}")
    for opt, bad in (("--report", run.report is not None), ("--cache-images", run.cache_images),
                     ("--manifest", run.manifest is not None),
                     ("--decoder batched", run.decode.decoder == "batched")):  # fmt: skip
        if bad:
            raise UsageError(f"{opt} is not available with --engine ray")
    from pathlib import Path

    from ..engines.distributed import has_scheme
    from ..uses.resume import folder_progress

    if not run.resume and not has_scheme(str(run.output)):
        # a folder holding records: refused before any work (its other files are named once, later)
        folder_progress(Path(run.output), run.fmt, False, notes=False)
    # The driver builds the text side only (on the CPU, fp32), loading the model only when the cache
    # misses or a background class is needed; Ray's actors load it where they run.
    prepared = prepare_run(
        replace(run.choice, device="cpu", precision="fp32", runtime="torch"), run.prompt_set,
        classifier_file=run.classifier_file, multi_label=run.multi_label, use_cache=run.use_cache, eager=False,
        quiet=run.quiet,
    )  # fmt: skip
    shared = SharedClassifier.build(prepared.spec, prepared.text, prepared.rule)
    d = run.decode
    summary = ray_run(
        run.inputs, shared, str(run.output), fmt=run.fmt, address=run.ray.address, workers=d.workers or 1,
        gpus_per_worker=run.ray.gpus_per_worker, cpus_per_worker=run.ray.cpus_per_worker,
        batch_size=run.batch_size or 64, stdin=run.stdin, quiet=run.quiet, top_k=run.top_k,
        precision=run.choice.precision, runtime=run.choice.runtime, max_pixels=d.max_pixels,
        jpeg_draft=d.jpeg_draft, min_score=run.min_score, null=run.null, max_bytes=d.max_bytes, timeout=d.timeout,
        resume=run.resume, video=run.video,
    )  # fmt: skip
    write_record(summary)
    if not summary.get("errors"):
        return Tally(int(summary.get("records") or 0))
    from ..engines.distributed import tally_output

    return tally_output(run.output, run.fmt)
