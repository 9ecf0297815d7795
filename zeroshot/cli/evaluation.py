"""``zeroshot eval``: accuracy on labelled images, calibration fitting."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from ..base.errors import UsageError
from ..image.idx import Split
from ..image.reading import DEFAULT_MAX_BYTES
from ..model.devices import Precision
from .app import app, handle_errors
from .common import (
    DatasetOpt,
    DeviceOpt,
    LabelOpt,
    LabelsOpt,
    MaxBytesOpt,
    ModelOpt,
    NoCacheOpt,
    PrecisionOpt,
    PreprocessOpt,
    PretrainedOpt,
    QuietOpt,
    RuntimeOpt,
    Steps,
    TemplatesOpt,
    WorkersOpt,
    cli_option,
    count_in_background,
    folder_prompt_set,
    model_choice,
    output_destination,
    prepare_run,
    spinner,
    write_record,
)


# Long for the same reason as classify: most of it is the option declarations Typer reads.
@app.command("eval")
@handle_errors
def eval_cmd(
    folder: Annotated[
        Path | None,
        typer.Argument(
            help="Folder with one sub-folder of images per class, named as the class (ankle_boot/: "
            "'ankle boot'), or use --dataset."
        ),
    ] = None,
    labels: LabelsOpt = None,
    label: LabelOpt = None,
    dataset: DatasetOpt = None,
    templates: TemplatesOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.AUTO,
    runtime: RuntimeOpt = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Folder with the dataset's IDX files (default: Debian's location)."),
    ] = None,
    split: Annotated[Split, typer.Option("--split", help="IDX split (with --dataset fashion-mnist).")] = Split.TEST,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate only the first N images.")] = None,
    batch_size: Annotated[int, cli_option("batch_size", help="Images per model call.")] = 64,
    workers: WorkersOpt = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report", help="Also write a self-contained HTML report: confusion matrix, worst mistakes as thumbnails."
        ),
    ] = None,
    calibrate: Annotated[
        Path | None,
        typer.Option(
            "--calibrate",
            help="Fit the --multi-label score calibration on these labelled images and write it to FILE "
            "(for classify --calibration FILE).",
        ),
    ] = None,
    shots: Annotated[
        int | None,
        typer.Option(
            "--shots",
            min=1,
            help="Also adapt to K examples per class (zeroshot adapt) and report zero-shot, a linear "
            "probe, class means and the adapted classifier side by side: the examples come from --train, the "
            "IDX train split, or this folder (scored on the rest).",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="With --shots: draws of the examples.")] = 5,
    train: Annotated[
        Path | None, typer.Option("--train", help="With --shots: draw the examples from this labelled folder.")
    ] = None,
    max_bytes: MaxBytesOpt = DEFAULT_MAX_BYTES,
    every: Annotated[
        float,
        cli_option("every", help="Videos in the folders: a frame every this many seconds (default 1)."),
    ] = 1.0,
    no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Measure accuracy on labelled images; prints one JSON record.

    The record has top-1, top-5, per-class recall, the confusion matrix (rows: true class, columns:
    predicted) and the top-1 of each template alone next to the ensemble's. Exit code 1 if any
    image could not be read (the record still covers the others).
    """
    from ..base.options import check
    from ..towers.pipeline import default_workers

    check(batch_size=batch_size, workers=workers, max_bytes=max_bytes, every=every)
    from ..uses.evaluate import evaluate_run

    report_dest = output_destination("--report", report)
    calibrate_dest = output_destination("--calibrate", calibrate)
    if train is not None and shots is None:
        raise UsageError("--train is for --shots")

    if folder is None and dataset is None:
        raise UsageError("give a FOLDER of class sub-folders, or --dataset fashion-mnist")
    if folder is None and not (dataset or "").lower().replace("_", "-").startswith("fashion-mnist"):
        raise UsageError(
            f"--dataset {dataset} without a FOLDER: only fashion-mnist can be read from its IDX files; "
            "give a FOLDER with one sub-folder per class"
        )
    prompt_set = folder_prompt_set(folder, dataset, labels, label, templates)
    show = not quiet and sys.stderr.isatty()

    prepared = prepare_run(
        model_choice(model, pretrained, preprocess, device, precision, runtime),
        prompt_set,
        use_cache=not no_cache,
        quiet=quiet,
    )
    loaded, text = prepared.loaded, prepared.text
    tower = prepared.image_tower(workers if workers is not None else default_workers(prepared.device))
    with Steps(show, "evaluating", "images", _eval_total(folder, data_dir, split.value, limit)) as steps:
        if folder is not None:
            from ..uses.evaluate import folder_items

            def count(found: Callable[[int], None]) -> int:  # a video's sampled frames each count
                import itertools

                from ..image.images import Input
                from ..image.video import VideoOptions, expand

                items = itertools.islice(folder_items(folder, text.prompt_set.classes), limit or None)
                inputs = (Input(str(item.key), item.error) for item in items)
                return sum(1 for _ in expand(inputs, VideoOptions(every=every), urls=False))

            count_in_background(steps, count)
        run = evaluate_run(
            loaded, text, folder=folder, idx_dir=data_dir, split=split.value, limit=limit,
            batch_size=batch_size, workers=workers, max_bytes=max_bytes, progress=steps.advance, tower=tower,
            every=every,
        )  # fmt: skip
    run.record.update(precision=prepared.precision, runtime=tower.runtime)
    record, failed = run.record, run.failed
    if shots is not None:
        from ..uses.adapt import few_shot_eval

        with spinner(show, f"adapting to {shots} examples per class, {seeds} draws"):
            record["few_shot"] = few_shot_eval(
                loaded, text, run, shots, seeds, train=train, idx_dir=data_dir, batch_size=batch_size,
                workers=workers, max_bytes=max_bytes, tower=tower,
            )  # fmt: skip
    if calibrate_dest is not None:
        from ..uses.calibration import calibrate_on

        record["calibration"] = calibrate_on(run, loaded, text, calibrate_dest)
    if report_dest is not None:
        from ..uses.report import eval_report

        with spinner(show, "writing the report"):
            eval_report(report_dest, run, text, loaded.logit_scale)
        record["report"] = str(report)
    if failed:
        record["errors"] = failed
    write_record(record)
    if failed:
        raise typer.Exit(1)


def _eval_total(folder: Path | None, data_dir: Path | None, split: str, limit: int | None) -> int | None:
    """How many images eval will score, when that is known before it starts (IDX files say it in
    their header; a folder is counted while the run goes)."""
    if folder is not None:
        return None
    from ..image.idx import split_size

    try:
        n = split_size(data_dir, split)
    except Exception:  # only the display's total: the run itself reports what is wrong with the files
        return limit
    return min(n, limit) if limit else n
