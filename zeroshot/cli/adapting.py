"""``zeroshot adapt``: a classifier file adapted to a few labelled examples per class."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

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
    TemplatesOpt,
    WorkersOpt,
    cli_option,
    folder_prompt_set,
    model_choice,
    output_destination,
    prepare_run,
    spinner,
    write_record,
)

METHOD = (
    "constrained linear probe from the zero-shot weights (CLAP-style) or the standard linear probe (logistic "
    "regression), chosen with its pull or C by cross-validation"
)


@app.command("adapt")
@handle_errors
def adapt_cmd(
    examples: Annotated[Path, typer.Argument(help="Folder with one sub-folder of example images per class.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The classifier file to write (for classify --classifier FILE).")
    ],
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
    seed: Annotated[int, typer.Option("--seed", help="Seeds the cross-validation folds and the fits.")] = 0,
    cache_images: Annotated[
        bool, typer.Option("--cache-images", help="Reuse and store image embeddings (re-adapting re-encodes nothing).")
    ] = False,
    workers: WorkersOpt = None,
    batch_size: Annotated[int, cli_option("batch_size", help="Images per model call.")] = 64,
    max_bytes: MaxBytesOpt = DEFAULT_MAX_BYTES,
    no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Adapt the zero-shot classifier to a few labelled examples per class; writes a classifier file.

    Classes are the prompt set's (--dataset, --labels, ...), else the sub-folder names, underscores
    read as spaces (ankle_boot/ is "ankle boot"); a class without examples keeps its zero-shot
    weights. Prints one JSON record. Exit code 1 if an example could not be read (the file is
    still written, from the others).
    """
    from ..uses.adapt import adapt_folder
    from ..uses.export import save_classifier

    start = time.perf_counter()
    dest = output_destination("--output", output)
    assert dest is not None
    prompt_set = folder_prompt_set(examples, dataset, labels, label, templates)
    prepared = prepare_run(
        model_choice(model, pretrained, preprocess, device, precision, runtime), prompt_set, use_cache=not no_cache,
        quiet=quiet,
    )  # fmt: skip
    loaded, text = prepared.loaded, prepared.text
    from ..base.options import check
    from ..towers.pipeline import default_workers

    check(batch_size=batch_size, workers=workers, max_bytes=max_bytes)

    tower = prepared.image_tower(workers if workers is not None else default_workers(prepared.device))
    image_cache = None
    if cache_images:
        from ..image.imagecache import open_image_cache

        image_cache = open_image_cache(prepared.embeddings_key(), loaded.embed_dim)
    try:
        with spinner(not quiet and sys.stderr.isatty(), "adapting"):
            run = adapt_folder(loaded, text, examples, seed=seed, batch_size=batch_size, workers=workers,
                               max_bytes=max_bytes, image_cache=image_cache, tower=tower)  # fmt: skip
    finally:
        if image_cache is not None:
            image_cache.close()
    adapted = run.adapted
    save_classifier(
        dest, prepared.spec, text.prompt_set, run.text.weights, precision=prepared.precision, method=METHOD,
        pull=adapted.lam, seed=seed, shots=json.dumps(adapted.shots, ensure_ascii=False),
        cross_validation=json.dumps({str(k): v for k, v in adapted.cv_accuracy.items()}),
        probe_c=json.dumps(adapted.probe_c),
        probe_cross_validation=json.dumps({str(k): v for k, v in adapted.probe_cv.items()}),
        examples=json.dumps(run.examples, ensure_ascii=False),
    )  # fmt: skip
    record = {
        "output": str(output), "classes": len(text.classes), "examples": len(run.examples), "shots": adapted.shots,
        "pull": adapted.lam, "cross_validation": {str(k): v for k, v in adapted.cv_accuracy.items()},
        "probe_c": adapted.probe_c, "probe_cross_validation": {str(k): v for k, v in adapted.probe_cv.items()},
        "model": prepared.spec.model, "pretrained": prepared.spec.pretrained,
        "seconds": round(time.perf_counter() - start, 3),
    }  # fmt: skip
    if run.failed:
        record["errors"] = run.failed
    write_record(record)
    if run.failed:
        if not quiet:
            sys.stderr.write(f"zeroshot: {len(run.failed)} example file(s) could not be read and were left out\n")
        raise typer.Exit(1)
