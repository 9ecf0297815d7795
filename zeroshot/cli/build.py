"""``zeroshot build-prompts``: build, cache and export a text classifier."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ..model.devices import Precision
from .app import app, handle_errors
from .common import (
    DatasetOpt,
    DeviceOpt,
    LabelOpt,
    LabelsOpt,
    ModelOpt,
    PrecisionOpt,
    PreprocessOpt,
    PretrainedOpt,
    QuietOpt,
    RuntimeOpt,
    TemplatesOpt,
    cli_option,
    model_choice,
    output_destination,
    prepare_run,
    prompt_set_from,
    write_record,
)


@app.command("build-prompts")
@handle_errors
def build_prompts(
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
    batch_size: Annotated[int, cli_option("batch_size", help="Prompts per model call.")] = 256,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the cache has this classifier.")] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Also export the classifier to FILE (safetensors: embeddings, classes, prompts and the model "
            "it belongs to) for classify --classifier FILE.",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Build the text classifier (averaged prompt embeddings) and store it in the cache.

    Prints one JSON record: what was built, the cache file, whether it was a cache hit, seconds
    (and the exported file with -o).
    """
    from ..base.options import check

    check(batch_size=batch_size)
    start = time.perf_counter()
    prompt_set = prompt_set_from(dataset, labels, label, templates)
    dest = output_destination("--output", output)
    prepared = prepare_run(
        model_choice(model, pretrained, preprocess, device, precision, runtime), prompt_set, eager=False, refresh=force,
        batch_size=batch_size, quiet=quiet,
    )  # fmt: skip
    spec, prec, text = prepared.spec, prepared.precision, prepared.text
    if dest is not None:
        from ..uses.export import save_classifier

        save_classifier(dest, spec, prompt_set, text.weights, precision=prec)
    write_record(
        {
            "name": prompt_set.name,
            "classes": len(prompt_set.classes),
            "templates": len(prompt_set.templates),
            "prompts": prompt_set.prompt_count(),
            "model": spec.model,
            "pretrained": spec.pretrained,
            "precision": prec,
            "cache_file": str(text.cache_path) if text.cache_path else None,
            "cache_hit": text.cache_hit,
            **({"output": str(output)} if output is not None else {}),
            "seconds": round(time.perf_counter() - start, 4),
        }
    )
