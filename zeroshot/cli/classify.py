"""``zeroshot classify``: its options, checked into one :class:`~.engine_local.ClassifyRun` for an engine."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..assembly import multi_label_from
from ..base.errors import UsageError
from ..base.options import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_TIMEOUT, check, named
from ..base.options import video_cap as video_cap_of
from ..image.video import VideoOptions
from ..model.devices import Precision
from ..towers.pipeline import DecodeOptions, Decoder
from .app import app, handle_errors
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
    RuntimeOpt,
    TemplatesOpt,
    WorkersOpt,
    cli_option,
    model_choice,
    open_classifier_file,
    prompt_set_from,
)
from .engine_local import ClassifyRun, RayPlacement, classify_locally, record_format


class RecordFormat(str, Enum):
    """``--format``: the local engine's (:class:`zeroshot.uses.output.Format`) and the Ray engine's parquet."""

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
    runtime: RuntimeOpt = None,
    batch_size: Annotated[int | None, cli_option("batch_size")] = None,
    top_k: Annotated[int, cli_option("top_k")] = 5,
    workers: WorkersOpt = None,
    decoder: Annotated[
        Decoder,
        typer.Option(
            "--decoder",
            help="auto (batched on CUDA, else pillow), pillow (worker processes, exact open_clip preprocessing) "
            "or batched (JPEGs decoded and resized as a batch on the model's device: nvJPEG on CUDA).",
        ),
    ] = Decoder.AUTO,
    jpeg_draft: Annotated[bool, cli_option("jpeg_draft")] = False,
    max_pixels: Annotated[int, cli_option("max_pixels")] = DEFAULT_MAX_PIXELS,
    max_bytes: MaxBytesOpt = None,
    timeout: Annotated[float, cli_option("timeout")] = DEFAULT_TIMEOUT,
    every: Annotated[float, cli_option("every")] = 1.0,
    max_frames: Annotated[int | None, cli_option("max_frames")] = None,
    per_video: Annotated[bool, cli_option("per_video")] = False,
    animated: Annotated[bool, cli_option("animated_as_video")] = False,
    max_video_bytes: Annotated[int | None, cli_option("max_video_bytes")] = None,
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
    multi_label: Annotated[bool, cli_option("multi_label")] = False,
    threshold: Annotated[float | None, cli_option("threshold")] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="A calibration file from eval --calibrate: makes --multi-label scores probabilities "
            "(implies --multi-label).",
        ),
    ] = None,
    background: Annotated[str | None, cli_option("background")] = None,
    min_score: Annotated[float | None, cli_option("min_score")] = None,
    fmt: Annotated[
        RecordFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="jsonl (one record per line), json, csv or table; jsonl or parquet with --engine ray. "
            "Default: what -o FILE's extension names (.jsonl, .ndjson, .json, .csv; .parquet with --engine ray), "
            "else jsonl.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write records to FILE instead of stdout: a regular file atomically (through a symlink, to its "
            "target), a FIFO, device or /dev/fd/N as they are made; - is stdout.",
        ),
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
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Go on with an interrupted run of the same command: its records so far are in FILE.partial "
            "(--output FILE keeps them as it goes); FILE ends up as one uninterrupted run writes it.",
        ),
    ] = False,
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
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Send the images to a zeroshot serve at URL (http://HOST:PORT) and print its records as a local "
            "run would; the server's model runs (API key from ZEROSHOT_API_KEY).",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Classify images and videos; one JSON record per input (per sampled video frame) on stdout, in order.

    A record is {"path", "label", "score", "top_k": [{"label", "score"}, ...]} or {"path", "error"};
    a video frame's has "time" (seconds) and "frame" after "path".
    Exit code 1 if any input could not be classified.
    """
    check(top_k=top_k, batch_size=batch_size, workers=workers, jpeg_draft=jpeg_draft, max_pixels=max_pixels,
          max_bytes=max_bytes, timeout=timeout, every=every, max_frames=max_frames, per_video=per_video,
          animated_as_video=animated, max_video_bytes=max_video_bytes, threshold=threshold,
          min_score=min_score)  # fmt: skip
    if engine is Engine.LOCAL and (ray_address is not None or gpus_per_worker or cpus_per_worker is not None):
        raise UsageError("--ray-address, --gpus-per-worker and --cpus-per-worker need --engine ray")
    if not inputs:
        raise UsageError("no inputs: give image files, folders, or - to read paths from stdin")
    if per_video and engine is Engine.RAY:
        raise UsageError("--per-video needs the local engine (--engine ray writes a record per sampled frame)")
    if per_video and resume:
        raise UsageError("--resume does not go with --per-video: give frame records (no --per-video) to a long run")
    rule_options = multi_label_from(multi_label, threshold, background, calibration, min_score)
    if server is not None:
        from .remote import classify_on_server, refuse_local_only

        refuse_local_only({
            "--model": model is not None, "--pretrained": pretrained is not None,
            "--preprocess": preprocess is not None, "--device": device != "auto",
            "--precision": precision is not Precision.AUTO, "--runtime": runtime is not None,
            "--classifier": classifier is not None, "--calibration": calibration is not None,
            "--cache-images": cache_images, "--engine ray": engine is Engine.RAY, "--report": report is not None,
            "--manifest": manifest is not None, "--resume": resume, "--per-video": per_video,
            "--every": every != 1.0, "--max-frames": max_frames is not None, "--animated-as-video": animated,
            "--max-video-bytes": max_video_bytes is not None, "--batch-size": batch_size is not None,
            "--workers": workers is not None, "--decoder": decoder is not Decoder.AUTO, "--jpeg-draft": jpeg_draft,
            "--max-pixels": max_pixels != DEFAULT_MAX_PIXELS,
        })  # fmt: skip
        tally = classify_on_server(
            server, inputs, prompt_set_from(dataset, labels, label, templates), dataset=dataset, top_k=top_k,
            multi_label=rule_options, min_score=min_score, fmt=record_format(fmt.value if fmt else None, output,
            ray=False), output=output, null=null, max_bytes=DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
            timeout=timeout,
        )  # fmt: skip
        if tally.any_failed:
            if not quiet:
                sys.stderr.write(f"zeroshot: {tally.line()}\n")
            raise typer.Exit(1)
        return
    classifier_file = open_classifier_file(classifier, labels, label, dataset, templates)
    video_cap, cap_option = video_cap_of(max_bytes, max_video_bytes)
    run = ClassifyRun(
        inputs=inputs,
        choice=model_choice(model, pretrained, preprocess, device, precision, runtime),
        prompt_set=None if classifier_file else prompt_set_from(dataset, labels, label, templates),
        classifier_file=classifier_file,
        multi_label=rule_options,
        decode=DecodeOptions(workers=workers, decoder=decoder.value, jpeg_draft=jpeg_draft, max_pixels=max_pixels,
                             max_bytes=DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
                             timeout=timeout),  # fmt: skip
        top_k=top_k, batch_size=batch_size, min_score=min_score, output=output, report=report,
        fmt=record_format(fmt.value if fmt else None, output, ray=engine is Engine.RAY),
        manifest=manifest,
        cache_images=cache_images, use_cache=not no_cache, quiet=quiet, null=null, resume=resume,
        ray=RayPlacement(ray_address, gpus_per_worker, cpus_per_worker) if engine is Engine.RAY else None,
        video=VideoOptions(every=every, max_frames=max_frames, animated=animated, max_bytes=video_cap,
                           cap_option=named(cap_option), max_pixels=max_pixels, timeout=timeout),
        per_video=per_video,
    )  # fmt: skip
    if run.ray is not None:
        from .engine_ray import classify_on_ray

        tally = classify_on_ray(run)
    else:
        tally = classify_locally(run)
    if tally.any_failed:
        if not quiet:  # a video counts as one input, its sampled frames apart: "3 of 6 inputs ..."
            sys.stderr.write(f"zeroshot: {tally.line()}\n")
        raise typer.Exit(1)
