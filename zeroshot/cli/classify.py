"""``zeroshot classify``: local and Ray engines."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from ..assembly import ModelChoice, MultiLabel
from ..errors import UsageError
from ..models import Precision
from ..pipeline import DecodeOptions, Decoder
from ..reading import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT
from .app import app, handle_errors

if TYPE_CHECKING:
    from ..assembly import Prepared
    from ..export import ClassifierFile
    from ..manifest import RunManifest
    from ..prompts import PromptSet
from .common import (
    DatasetOpt,
    DeviceOpt,
    InputsArg,
    LabelOpt,
    LabelsOpt,
    MaxBytesOpt,
    ModelOpt,
    NoCacheOpt,
    PrecisionOpt,
    PreprocessOpt,
    PretrainedOpt,
    QuietOpt,
    Steps,
    TemplatesOpt,
    WorkersOpt,
    check_folder,
    count_in_background,
    open_classifier_file,
    prepare_run,
    prompt_set_from,
    write_record,
)


class RecordFormat(str, Enum):
    """``--format``: the local engine's (:class:`zeroshot.output.Format`) and the Ray engine's parquet."""

    JSONL = "jsonl"
    JSON = "json"
    CSV = "csv"
    TABLE = "table"
    PARQUET = "parquet"


class Engine(str, Enum):
    LOCAL = "local"
    RAY = "ray"


# Long, on purpose: Typer reads a command's options from its signature, so most of this function is
# their declarations; the body only builds one ClassifyRun and hands it to an engine.
@app.command()
@handle_errors
def classify(
    inputs: InputsArg = None,
    labels: LabelsOpt = None,
    label: LabelOpt = None,
    dataset: DatasetOpt = None,
    templates: TemplatesOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.AUTO,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-b", min=1, help="Images per model call (default: 32; 256 on CUDA).")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per record (at most the classes).")] = 5,
    workers: WorkersOpt = None,
    decoder: Annotated[
        Decoder,
        typer.Option(
            "--decoder",
            help="auto (batched on CUDA, else pillow), pillow (worker processes, exact open_clip preprocessing) "
            "or batched (JPEGs decoded and resized as a batch on the model's device: nvJPEG on CUDA).",
        ),
    ] = Decoder.AUTO,
    jpeg_draft: Annotated[
        bool,
        typer.Option(
            "--jpeg-draft",
            help="Let the JPEG decoder shrink large images by 2-8x while decoding (faster; changes pixels "
            "slightly, see README).",
        ),
    ] = False,
    max_pixels: Annotated[
        int,
        typer.Option(
            "--max-pixels",
            min=0,
            help="Refuse images whose header declares more pixels than this (default 178956970, "
            "Pillow's own limit; 0: no limit). Checked before decoding.",
        ),
    ] = 178_956_970,
    max_bytes: MaxBytesOpt = DEFAULT_MAX_BYTES,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=0.1,
            help="For http(s):// inputs: seconds to connect and between reads (a download gets 6x this in all).",
        ),
    ] = DEFAULT_TIMEOUT,
    null: Annotated[
        bool,
        typer.Option("--null", "-0", help="Paths on stdin (-) are separated by NUL bytes (find -print0), not lines."),
    ] = False,
    no_cache: NoCacheOpt = False,
    cache_images: Annotated[
        bool,
        typer.Option(
            "--cache-images",
            help="Store image embeddings by file content, so re-running with new labels skips the image model.",
        ),
    ] = False,
    classifier: Annotated[
        Path | None,
        typer.Option(
            "--classifier",
            help="A classifier file from build-prompts -o (its classes and embeddings; its model unless "
            "--model is given, and refused for any other model).",
        ),
    ] = None,
    multi_label: Annotated[
        bool,
        typer.Option(
            "--multi-label",
            help="Decide each label on its own (images holding several things): records list every label "
            "scoring at least --threshold under 'labels' (score: see README).",
        ),
    ] = False,
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold", min=0.0, max=1.0, help="With --multi-label: the per-label score that counts as present."
        ),
    ] = 0.5,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="A calibration file from eval --calibrate: makes --multi-label scores probabilities "
            "(implies --multi-label).",
        ),
    ] = None,
    background: Annotated[
        str,
        typer.Option(
            "--background",
            help="With --multi-label on CLIP models: the neutral word each label is weighed against.",
        ),
    ] = "object",
    min_score: Annotated[
        float | None,
        typer.Option(
            "--min-score",
            min=0.0,
            max=1.0,
            help='Below this top score the record says "label": null (none of these); its top_k stays.',
        ),
    ] = None,
    fmt: Annotated[
        RecordFormat,
        typer.Option(
            "--format",
            "-f",
            help="jsonl (default, one record per line), json, csv or table; jsonl or parquet with --engine ray.",
        ),
    ] = RecordFormat.JSONL,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write records to FILE (atomically) instead of stdout.")
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Also write a contact sheet: a self-contained HTML page, thumbnails and top-k."),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="Write the run's manifest (command, versions, model and weights, preprocessing, prompts hash, "
            "counts, times) to PATH as JSON. Default with --output FILE: FILE.manifest.json.",
        ),
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(
            "--engine",
            help="local (this process and its decoding workers) or ray (Ray Data: --workers actors, "
            "--output DIR; needs zeroshot-clip\\[ray]).",
        ),
    ] = Engine.LOCAL,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="With --engine ray: the cluster to join (default: start a local Ray)."),
    ] = None,
    gpus_per_worker: Annotated[
        float, typer.Option("--gpus-per-worker", min=0, help="With --engine ray: GPUs per actor (0: CPU actors).")
    ] = 0.0,
    cpus_per_worker: Annotated[
        float | None,
        typer.Option("--cpus-per-worker", min=0, help="With --engine ray: CPUs per actor (default 1)."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Classify images; one JSON record per input on stdout, in input order.

    A record is {"path", "label", "score", "top_k": [{"label", "score"}, ...]} or {"path", "error"}.
    Exit code 1 if any input could not be classified.
    """
    if engine is Engine.LOCAL and (ray_address is not None or gpus_per_worker or cpus_per_worker is not None):
        raise UsageError("--ray-address, --gpus-per-worker and --cpus-per-worker need --engine ray")
    if not background.strip():
        raise UsageError("--background is empty")
    if not inputs:
        raise UsageError("no inputs: give image files, folders, or - to read paths from stdin")
    classifier_file = open_classifier_file(classifier, labels, label, dataset, templates)
    wants_rule = multi_label or calibration is not None
    run = ClassifyRun(
        inputs=inputs,
        choice=ModelChoice(model, pretrained, preprocess, device, precision.value),
        prompt_set=None if classifier_file else prompt_set_from(dataset, labels, label, templates),
        classifier_file=classifier_file,
        multi_label=MultiLabel(threshold, background.strip(), calibration) if wants_rule else None,
        decode=DecodeOptions(workers=workers, decoder=decoder.value, jpeg_draft=jpeg_draft, max_pixels=max_pixels,
                             max_bytes=max_bytes, timeout=timeout),  # fmt: skip
        top_k=top_k, batch_size=batch_size, min_score=min_score, fmt=fmt.value, output=output, report=report,
        manifest=manifest,
        cache_images=cache_images, use_cache=not no_cache, quiet=quiet, null=null,
        ray=RayPlacement(ray_address, gpus_per_worker, cpus_per_worker) if engine is Engine.RAY else None,
    )  # fmt: skip
    failed, total = _classify_on_ray(run) if run.ray is not None else _classify_locally(run)
    if failed:
        if not quiet:
            sys.stderr.write(f"zeroshot: {failed} of {total} inputs could not be classified\n")
        raise typer.Exit(1)


@dataclass(frozen=True)
class RayPlacement:
    """``--engine ray``'s own options: the cluster to join and each actor's resources."""

    address: str | None
    gpus_per_worker: float
    cpus_per_worker: float | None


@dataclass(frozen=True)
class ClassifyRun:
    """Everything one ``classify`` run was asked for, checked and typed, built once from the options."""

    inputs: list[str]
    choice: ModelChoice
    prompt_set: PromptSet | None  # None: the classifier file's
    classifier_file: ClassifierFile | None
    multi_label: MultiLabel | None
    decode: DecodeOptions
    top_k: int
    batch_size: int | None  # None: the engine's default for the device
    min_score: float | None
    fmt: str
    output: Path | None
    report: Path | None
    manifest: Path | None
    cache_images: bool
    use_cache: bool
    quiet: bool
    null: bool
    ray: RayPlacement | None  # None: the local engine

    @property
    def stdin(self) -> TextIO | None:
        return sys.stdin if "-" in self.inputs else None


def _classify_locally(run: ClassifyRun) -> tuple[int, int]:
    """The local engine: records in input order to stdout or ``--output``; (failed, total).

    With ``--cache-images`` and a cached text classifier that holds the model's scoring facts, the
    model loads only when an input needs the image tower: relabelling images whose embeddings are
    all cached builds no model and imports no torch (:func:`zeroshot.pipeline.cache_first`).
    """
    from ..classifier import remember_scoring
    from ..images import count_inputs, iter_inputs
    from ..output import FORMATS, RecordWriter, apply_min_score
    from ..pipeline import ImageEncoder, cache_first, default_batch_size, encoded_records

    if run.fmt not in FORMATS:
        raise UsageError(f"--format {run.fmt} needs --engine ray (the local engine writes {', '.join(FORMATS)})")
    check_folder("--output", run.output)
    check_folder("--report", run.report)
    check_folder("--manifest", run.manifest)
    manifest = _manifest_for(run)
    show = not run.quiet and sys.stderr.isatty()
    prepared = prepare_run(
        run.choice, run.prompt_set, classifier_file=run.classifier_file, use_cache=run.use_cache, quiet=run.quiet,
        multi_label=run.multi_label, eager=not run.cache_images or run.classifier_file is not None,
    )  # fmt: skip
    text, rule, facts = prepared.text, prepared.rule, prepared.text.scoring
    needs_model = prepared.is_loaded or (rule is not None and rule.kind != "calibrated")
    model_free = run.cache_images and facts is not None and not needs_model
    if not model_free and run.classifier_file is None:
        remember_scoring(prepared.spec, text, prepared.loaded)  # the next --cache-images run may need no model
    if manifest is not None:
        manifest.mark("ready")
    sheet = None
    if run.report is not None:
        from ..report import ContactSheet

        sheet = ContactSheet(
            run.report, title=f"zeroshot classify: {text.prompt_set.name}",
            subtitle=f"model {prepared.spec.label} · {len(text.classes)} classes", max_pixels=run.decode.max_pixels,
        )  # fmt: skip
    image_cache = None
    if run.cache_images:
        from ..imagecache import image_cache_key, open_image_cache

        if model_free:
            assert facts is not None
            image_cache = open_image_cache(facts["image_key"], facts["embed_dim"])
        else:
            image_cache = open_image_cache(image_cache_key(prepared.loaded), prepared.loaded.embed_dim)
    batch_size = run.batch_size or default_batch_size(prepared.device)

    def encoder() -> ImageEncoder:
        return ImageEncoder(prepared.loaded, batch_size=batch_size, image_cache=image_cache, options=run.decode)

    stream = iter_inputs(run.inputs, stdin=run.stdin, null=run.null)
    if model_free and image_cache is not None and facts is not None:
        batches = cache_first(stream, image_cache, encoder, batch_size=batch_size, max_bytes=run.decode.max_bytes)
        scale = facts["logit_scale"]
    else:
        batches, scale = encoder().batches(stream), prepared.loaded.logit_scale
    failed = total = 0
    steps = Steps(show, "classifying", "images")
    if "-" not in run.inputs:  # paths from stdin cannot be counted ahead
        count_in_background(steps, lambda found: count_inputs(run.inputs, found))
    writer = RecordWriter(run.fmt, str(run.output) if run.output is not None else None, multi_label=rule is not None)
    try:
        for record in encoded_records(batches, text.weights, scale, text.classes, run.top_k, rule):
            record = apply_min_score(record, run.min_score)
            writer.write(record)
            if sheet is not None:
                sheet.add(record)
            total += 1
            failed += "error" in record
            steps.advance()
            if manifest is not None and total == 1:
                manifest.mark("first_record")
        writer.close()
        if sheet is not None:
            sheet.write()
    finally:
        writer.abort()  # only does something if the run did not finish: no half-written --output file
        steps.stop()
        if image_cache is not None:
            image_cache.close()
    if manifest is not None:
        _finish_manifest(manifest, run, prepared, total, failed)
    return failed, total


def _manifest_for(run: ClassifyRun) -> RunManifest | None:
    """The run's manifest: at --manifest PATH, else beside --output FILE; none for stdout."""
    from ..manifest import RunManifest, manifest_path

    path = run.manifest or (manifest_path(run.output) if run.output is not None else None)
    if path is None:
        return None
    for option, other in (("--output", run.output), ("--report", run.report)):
        if other is not None and path.resolve() == other.resolve():
            raise UsageError(f"--manifest {path} is the {option} file too: give it a path of its own")
    return RunManifest(path, output=str(run.output) if run.output is not None else None, fmt=run.fmt)


def _finish_manifest(manifest: RunManifest, run: ClassifyRun, prepared: Prepared, total: int, failed: int) -> None:
    import json

    from ..manifest import identity

    text, loaded = prepared.text, prepared.loaded_if_any
    if loaded is not None:
        preprocess = repr(loaded.preprocess)
    elif text.scoring is not None:
        preprocess = json.loads(text.scoring["image_key"]).get("preprocess")
    else:
        preprocess = None
    manifest.fields.update(identity(prepared.spec, text.prompt_set, precision=prepared.precision,
                                    device=prepared.device, preprocess=preprocess))  # fmt: skip
    manifest.fields.update(
        classifier_file=str(run.classifier_file.path) if run.classifier_file is not None else None,
        text_classifier="cache" if text.cache_hit and run.classifier_file is None else (
            "file" if run.classifier_file is not None else "built"),
        image_tower="ran" if loaded is not None else "not needed: every image embedding was cached",
        top_k=run.top_k, multi_label=prepared.rule is not None, min_score=run.min_score,
    )  # fmt: skip
    if loaded is not None:
        manifest.timings.update({f"model_{k}": v for k, v in loaded.timings.items()})
    manifest.write(records=total, errors=failed)


def _classify_on_ray(run: ClassifyRun) -> tuple[int, int]:
    """``classify --engine ray``: the text classifier is made here, once; Ray's actors classify.
    Prints the run's summary record; returns (failed, total)."""
    from dataclasses import replace

    from ..distributed import OUTPUT_FORMATS, SharedClassifier, require_ray
    from ..distributed import run as ray_run

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
    # The driver builds the text side only (on the CPU, fp32), loading the model only when the cache
    # misses or a background class is needed; Ray's actors load it where they run.
    prepared = prepare_run(
        replace(run.choice, device="cpu", precision="fp32"), run.prompt_set, classifier_file=run.classifier_file,
        multi_label=run.multi_label, use_cache=run.use_cache, eager=False, quiet=run.quiet,
    )  # fmt: skip
    shared = SharedClassifier.build(prepared.spec, prepared.text, prepared.rule)
    d = run.decode
    summary = ray_run(
        run.inputs, shared, str(run.output), fmt=run.fmt, address=run.ray.address, workers=d.workers or 1,
        gpus_per_worker=run.ray.gpus_per_worker, cpus_per_worker=run.ray.cpus_per_worker,
        batch_size=run.batch_size or 64, stdin=run.stdin, quiet=run.quiet, top_k=run.top_k,
        precision=run.choice.precision, max_pixels=d.max_pixels, jpeg_draft=d.jpeg_draft, min_score=run.min_score,
        null=run.null, max_bytes=d.max_bytes, timeout=d.timeout,
    )  # fmt: skip
    write_record(summary)
    return int(summary.get("errors") or 0), int(summary.get("records") or 0)
