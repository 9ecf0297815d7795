"""``zeroshot classify``: its options, checked into one :class:`~.engine_local.ClassifyRun` for an engine."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..assembly import multi_label_from
from ..base.errors import UsageError
from ..image.reading import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT
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
    model_choice,
    open_classifier_file,
    prompt_set_from,
)
from .engine_local import ClassifyRun, RayPlacement, classify_locally


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
    every: Annotated[
        float,
        typer.Option(
            "--every",
            min=0.001,
            help="Videos: sample a frame every this many seconds of presentation time (default 1.0); "
            "each sampled frame is one record with its time and frame number.",
        ),
    ] = 1.0,
    max_frames: Annotated[
        int | None,
        typer.Option("--max-frames", min=1, help="Videos: at most this many sampled frames per video."),
    ] = None,
    per_video: Annotated[
        bool,
        typer.Option(
            "--per-video",
            help="Videos: one record per video, its frames' probabilities averaged, with the times the top "
            "label is strongest (and, with --multi-label, the segments where each label holds).",
        ),
    ] = False,
    animated: Annotated[
        bool,
        typer.Option("--animated-as-video", help="Sample the frames of animated GIF and WebP files as videos."),
    ] = False,
    max_video_bytes: Annotated[
        int,
        typer.Option(
            "--max-video-bytes",
            min=0,
            help="Refuse video files larger than this (default: --max-bytes when given, else 64 GiB; 0: no limit). "
            "Videos are read as a stream, so memory does not grow with their size; --max-pixels applies to "
            "their frames.",
        ),
    ] = 64 * 1024**3,
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
        float | None,
        typer.Option(
            "--threshold",
            min=0.0,
            max=1.0,
            help="With --multi-label: the per-label score that counts as present (default 0.5).",
        ),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="A calibration file from eval --calibrate: makes --multi-label scores probabilities "
            "(implies --multi-label).",
        ),
    ] = None,
    background: Annotated[
        str | None,
        typer.Option(
            "--background",
            help="With --multi-label on CLIP models: the neutral word each label is weighed against (default "
            "'object').",
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            "--min-score",
            min=0.0,
            max=1.0,
            help='Below this top score the record says "label": null (none of these); its top_k stays. '
            "Not with --multi-label (--threshold decides there).",
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
    quiet: QuietOpt = False,
) -> None:
    """Classify images and videos; one JSON record per input (per sampled video frame) on stdout, in order.

    A record is {"path", "label", "score", "top_k": [{"label", "score"}, ...]} or {"path", "error"};
    a video frame's has "time" (seconds) and "frame" after "path".
    Exit code 1 if any input could not be classified.
    """
    if engine is Engine.LOCAL and (ray_address is not None or gpus_per_worker or cpus_per_worker is not None):
        raise UsageError("--ray-address, --gpus-per-worker and --cpus-per-worker need --engine ray")
    if not inputs:
        raise UsageError("no inputs: give image files, folders, or - to read paths from stdin")
    if per_video and engine is Engine.RAY:
        raise UsageError("--per-video needs the local engine (--engine ray writes a record per sampled frame)")
    if per_video and resume:
        raise UsageError("--resume does not go with --per-video: give frame records (no --per-video) to a long run")
    rule_options = multi_label_from(multi_label, threshold, background, calibration, min_score)
    classifier_file = open_classifier_file(classifier, labels, label, dataset, templates)
    video_cap, cap_option = _video_cap(max_bytes, max_video_bytes)
    run = ClassifyRun(
        inputs=inputs,
        choice=model_choice(model, pretrained, preprocess, device, precision, runtime),
        prompt_set=None if classifier_file else prompt_set_from(dataset, labels, label, templates),
        classifier_file=classifier_file,
        multi_label=rule_options,
        decode=DecodeOptions(workers=workers, decoder=decoder.value, jpeg_draft=jpeg_draft, max_pixels=max_pixels,
                             max_bytes=max_bytes, timeout=timeout),  # fmt: skip
        top_k=top_k, batch_size=batch_size, min_score=min_score, fmt=fmt.value, output=output, report=report,
        manifest=manifest,
        cache_images=cache_images, use_cache=not no_cache, quiet=quiet, null=null, resume=resume,
        ray=RayPlacement(ray_address, gpus_per_worker, cpus_per_worker) if engine is Engine.RAY else None,
        video=VideoOptions(every=every, max_frames=max_frames, animated=animated, max_bytes=video_cap,
                           cap_option=cap_option, max_pixels=max_pixels, timeout=timeout),
        per_video=per_video,
    )  # fmt: skip
    if run.ray is not None:
        from .engine_ray import classify_on_ray

        failed, total = classify_on_ray(run)
    else:
        failed, total = classify_locally(run)
    if failed:
        if not quiet:
            sys.stderr.write(f"zeroshot: {failed} of {total} inputs could not be classified\n")
        raise typer.Exit(1)


def _video_cap(max_bytes: int, max_video_bytes: int) -> tuple[int, str]:
    """The byte cap for video files and the option it comes from: --max-video-bytes when given; else
    --max-bytes when given (it applies to every input); else the video default (64 GiB: a video is
    read as a stream, and 512 MiB, the image cap, refuses a phone's five minutes of 4K)."""
    from ..image.video import DEFAULT_MAX_VIDEO_BYTES

    if max_video_bytes == DEFAULT_MAX_VIDEO_BYTES and max_bytes != DEFAULT_MAX_BYTES:
        return max_bytes, "--max-bytes"
    return max_video_bytes, "--max-video-bytes"
