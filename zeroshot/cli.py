"""The command line: parse options, call the library, print. Errors become one stderr line.

Exit codes: 0 success; 1 an input failed or a runtime error; 2 a usage error; 130/143 interrupted
by SIGINT/SIGTERM; 141 stdout closed early (e.g. ``| head``), which ends the run quietly.
torch and open_clip are imported only inside commands that need them, so ``--help`` is fast.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .errors import UsageError, ZeroshotError
from .reading import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT

app = typer.Typer(
    name="zeroshot",
    help="CLIP zero-shot image classification: labels in, JSON Lines out.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])
EXIT_SIGPIPE = 141


def _fail(message: str, code: int) -> typer.Exit:
    sys.stderr.write(f"zeroshot: error: {message}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def _quiet_broken_pipe() -> typer.Exit:
    # Point stdout at /dev/null so the interpreter's final flush cannot raise again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return typer.Exit(EXIT_SIGPIPE)


def handle_errors(func: F) -> F:
    """Map library errors, closed pipes and interrupts to one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ZeroshotError as e:
            raise _fail(str(e), e.exit_code) from None
        except BrokenPipeError:
            raise _quiet_broken_pipe() from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None
        except _Terminated:
            raise _fail("terminated", 143) from None
        except MemoryError:
            raise _fail("out of memory (try a smaller --batch-size)", 1) from None

    return wrapper  # type: ignore[return-value]


class _Terminated(BaseException):
    """Raised from the SIGTERM handler so that cleanup (temporary files) runs as for Ctrl-C."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


class _StderrLineHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "warning" if record.levelno >= logging.WARNING else "note"
            sys.stderr.write(f"zeroshot: {level}: {' '.join(record.getMessage().split())}\n")
            sys.stderr.flush()
        except Exception:  # never let a message break a run
            pass


def _setup_warnings() -> None:
    import warnings

    # Pillow warns (multi-line, on stderr) about large images and odd palettes; the image is still
    # decoded, or fails with an error record, so the warning says nothing the user can act on.
    warnings.filterwarnings("ignore", module=r"PIL\.")


def _setup_logging() -> None:
    # open_clip logs through the root logger; a handler there keeps Python's last-resort
    # stderr handler from printing its chatter. Our own messages go through "zeroshot".
    logging.getLogger().addHandler(logging.NullHandler())
    ours = logging.getLogger("zeroshot")
    ours.handlers[:] = [_StderrLineHandler()]
    ours.setLevel(logging.WARNING)
    ours.propagate = False


@app.callback()
def _root() -> None:
    """CLIP zero-shot image classification: labels in, JSON Lines out."""
    _setup_logging()
    _setup_warnings()


# --- shared options -----------------------------------------------------------------------------

InputsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Image files, folders (searched recursively for images), http(s):// URLs, or - to read paths from "
        "stdin (one per line; with -0, NUL-separated)."
    ),
]
LabelsOpt = Annotated[
    Path | None, typer.Option("--labels", "-l", help="UTF-8 file, one label per line ('#' lines ignored).")
]
LabelOpt = Annotated[list[str] | None, typer.Option("--label", help="A label; repeat for more.")]
DatasetOpt = Annotated[
    str | None, typer.Option("--dataset", "-d", help="A prompt pack: classes and templates (e.g. cifar10).")
]
TemplatesOpt = Annotated[
    Path | None,
    typer.Option("--templates", "-t", help="YAML file of templates with {label}; overrides the pack's."),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="open_clip architecture (ViT-B-32, RN50, ...) or hf-hub:ORG/REPO. Env: ZEROSHOT_MODEL.",
    ),
]
PretrainedOpt = Annotated[
    str | None,
    typer.Option(
        "--pretrained",
        "-p",
        help="open_clip pretrained tag (openai, ...) or a checkpoint file. Env: ZEROSHOT_PRETRAINED.",
    ),
]
PreprocessOpt = Annotated[
    str | None,
    typer.Option(
        "--preprocess",
        help="With --pretrained FILE: the pretrained tag whose image preprocessing the checkpoint follows "
        "(default: the one the architecture's tags share).",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 or bf16.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the text-embedding cache.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display on stderr.")]
MaxBytesOpt = Annotated[
    int,
    typer.Option(
        "--max-bytes",
        min=0,
        help="Refuse inputs larger than this many bytes (default 536870912 = 512 MiB, the largest an uncompressed "
        "image within --max-pixels can be; 0: no limit). Checked on the size, and enforced while reading.",
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=0,
        help="Decoding worker processes (default: a quarter of the cores on CPU, all but one with CUDA; "
        "0: decode in the main process).",
    ),
]


def _prompt_set(dataset: str | None, labels: Path | None, label: list[str] | None, templates: Path | None) -> Any:
    from .prompts import resolve_prompt_set

    return resolve_prompt_set(dataset=dataset, labels_file=labels, labels=label or (), templates_file=templates)


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _status(show: bool, message: str) -> Any:
    """A spinner on stderr while something slow runs, only for people at a terminal."""
    import contextlib

    return _console().status(message) if show else contextlib.nullcontext()


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


class _Downloads:
    """A :class:`~zeroshot.models.DownloadReport` on stderr: at a terminal a bar per file (bytes,
    rate, time left), pausing the loading spinner meanwhile; otherwise one line per file (what, how
    big, where it goes). stdout is never touched."""

    def __init__(self, tty: bool, status: Any = None) -> None:
        self.tty = tty
        self.status = status
        self.bar: Any = None
        self.task: Any = None

    def start(self, what: str, size: int | None, dest: str) -> None:
        if not self.tty:
            sys.stderr.write(f"zeroshot: downloading {what} ({_size(size)}) into {dest}\n")
            sys.stderr.flush()
            return
        from rich.markup import escape
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        if self.status is not None:
            self.status.stop()
        self.what, self.size, self.began = what, size, time.perf_counter()
        self.bar = Progress(
            TextColumn(f"downloading {escape(what)}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=_console(),
        )  # fmt: skip
        self.bar.start()
        self.task = self.bar.add_task("download", total=size)

    def progress(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)

    def end(self, ok: bool) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
            took = max(time.perf_counter() - self.began, 1e-3)
            if ok and self.size:  # what the bar showed, as one line that stays
                sys.stderr.write(f"zeroshot: downloaded {self.what}: {_size(self.size)} in {took:.1f} s "
                                 f"({_size(int(self.size / took))}/s)\n")  # fmt: skip
            if self.status is not None:
                self.status.start()


def _downloads(quiet: bool, status: Any = None) -> _Downloads | None:
    """The download display for a command (None with --quiet)."""
    return None if quiet else _Downloads(sys.stderr.isatty(), status)


def _model_and_text(
    prompt_set: Any,
    model: str | None,
    pretrained: str | None,
    device: str,
    precision: str,
    no_cache: bool,
    show: bool,
    classifier_file: Any = None,
    preprocess: str | None = None,
    quiet: bool = False,
) -> tuple[Any, Any]:
    """Load the model (spinner for people) and get its text classifier: from ``classifier_file``
    (a :class:`~zeroshot.export.ClassifierFile`, checked against the model), else from the cache
    or built."""
    from .classifier import get_text_classifier
    from .models import load_model, resolve_device, resolve_precision

    spec = _spec_for(classifier_file, model, pretrained, preprocess)  # a classifier file's model is checked here
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    with _status(show, f"loading {spec.label} on {dev} ({prec})") as status:
        loaded = load_model(spec, dev, prec, downloads=_downloads(quiet, status))
    _say_notes(loaded.notes, quiet)
    if classifier_file is not None:
        from .export import check_model

        check_model(classifier_file, spec, loaded.embed_dim)
        return loaded, classifier_file.text_classifier(dev)
    text = get_text_classifier(spec, prompt_set, lambda: loaded, use_cache=not no_cache, device=dev, precision=prec)
    return loaded, text


def _open_classifier_file(
    classifier: Path | None, labels: Any, label: Any, dataset: str | None, templates: Path | None
) -> Any:
    """The ``--classifier`` file, read and checked, or None; it excludes the other class options."""
    if classifier is None:
        return None
    from .export import load_classifier

    if labels is not None or label or dataset is not None or templates is not None:
        raise UsageError("--classifier brings its own classes: drop --labels/--label/--dataset/--templates")
    return load_classifier(classifier)


def _say_notes(notes: list[str], quiet: bool) -> None:
    """What loading inferred (a checkpoint file's preprocessing, QuickGELU): one line each on stderr."""
    if not quiet:
        for note in notes:
            sys.stderr.write(f"zeroshot: note: {note}\n")
        sys.stderr.flush()


def _spec_for(file: Any, model: str | None, pretrained: str | None, preprocess: str | None = None) -> Any:
    """The model to run: --model/--pretrained, else a classifier file's own; a file is checked against it."""
    from .models import resolve_spec

    if file is None:
        return resolve_spec(model, pretrained, preprocess)
    from .export import check_model

    if model is None and pretrained is None:
        spec = _spec_of_classifier_file(file)
    else:
        spec = resolve_spec(model, pretrained, preprocess)
    check_model(file, spec)  # before loading: a wrong model fails fast
    return spec


def _multilabel(
    spec: Any, text: Any, load: Callable[[], Any], threshold: float, background: str, calibration: Any, quiet: bool
) -> Any:
    """The --multi-label rule; says on stderr when its scores are not calibrated."""
    from .classifier import resolve_multilabel

    rule = resolve_multilabel(spec, text.prompt_set, load, threshold=threshold, background=background,
                              calibration=calibration)  # fmt: skip
    if rule.kind == "background" and not quiet:
        sys.stderr.write(
            "zeroshot: note: --multi-label scores are not calibrated for this model (label vs. "
            f"'{background}'); eval --calibrate FILE fits a calibration to pass with --calibration\n"
        )
    return rule


def _check_folder(option: str, path: Path | None) -> None:
    """A file option's folder must exist before any work is done."""
    if path is not None and not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise UsageError(f"{option} {path}: its folder does not exist")


def _spec_of_classifier_file(file: Any) -> Any:
    """The model a classifier file was built for, found on this machine."""
    from .errors import ModelLoadError
    from .models import spec_built_for

    try:
        return spec_built_for(file.model, file.pretrained)
    except ModelLoadError as e:
        raise ModelLoadError(
            f"{e} (the model classifier file {file.path} was built with; pass --model/--pretrained)"
        ) from None


def _write_record(record: dict[str, Any]) -> None:
    line = json.dumps(record, ensure_ascii=False)
    try:
        data = line.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not valid UTF-8: escape it instead
        data = json.dumps(record, ensure_ascii=True).encode("ascii")
    out = sys.stdout.buffer
    out.write(data + b"\n")
    out.flush()


# --- commands -----------------------------------------------------------------------------------


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
    precision: PrecisionOpt = "auto",
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-b", min=1, help="Images per model call (default: 32; 256 on CUDA).")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per record (at most the classes).")] = 5,
    workers: WorkersOpt = None,
    decoder: Annotated[
        str,
        typer.Option(
            "--decoder",
            help="auto (batched on CUDA, else pillow), pillow (worker processes, exact open_clip preprocessing) "
            "or batched (JPEGs decoded and resized as a batch on the model's device: nvJPEG on CUDA).",
        ),
    ] = "auto",
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
        float, typer.Option("--threshold", help="With --multi-label: the per-label score that counts as present.")
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
            help='Below this top score the record says "label": null (none of these); its top_k stays.',
        ),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="jsonl (default, one record per line), json, csv or table; jsonl or parquet with --engine ray.",
        ),
    ] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write records to FILE (atomically) instead of stdout.")
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Also write a contact sheet: a self-contained HTML page, thumbnails and top-k."),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="local (this process and its decoding workers) or ray (Ray Data: --workers actors, "
            "--output DIR; needs zeroshot\\[ray]).",
        ),
    ] = "local",
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
    from .images import iter_inputs
    from .output import FORMATS, RecordWriter, apply_min_score
    from .pipeline import DECODERS, DecodeOptions, classify_inputs, default_batch_size

    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise UsageError(f"--min-score must be between 0 and 1, not {min_score}")
    if engine not in ("local", "ray"):
        raise UsageError(f"--engine must be local or ray, not {engine!r}")
    if engine == "local" and (ray_address is not None or gpus_per_worker or cpus_per_worker is not None):
        raise UsageError("--ray-address, --gpus-per-worker and --cpus-per-worker need --engine ray")
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold must be between 0 and 1, not {threshold}")
    if not background.strip():
        raise UsageError("--background is empty")
    if decoder not in DECODERS:
        raise UsageError(f"--decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    if not inputs:
        raise UsageError("no inputs: give image files, folders, or - to read paths from stdin")
    classifier_file = _open_classifier_file(classifier, labels, label, dataset, templates)
    if engine == "ray":
        _classify_on_ray(
            inputs, labels=labels, label=label, dataset=dataset, templates=templates, model=model,
            pretrained=pretrained, precision=precision, batch_size=batch_size, top_k=top_k, workers=workers,
            decoder=decoder, jpeg_draft=jpeg_draft, max_pixels=max_pixels, no_cache=no_cache,
            cache_images=cache_images, classifier_file=classifier_file, multi_label=multi_label,
            threshold=threshold, calibration=calibration, background=background.strip(), min_score=min_score,
            fmt=fmt, output=output, report=report, ray_address=ray_address, gpus_per_worker=gpus_per_worker,
            quiet=quiet, cpus_per_worker=cpus_per_worker, max_bytes=max_bytes, timeout=timeout, null=null,
            preprocess=preprocess,
        )  # fmt: skip
        return
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    _check_folder("--output", output)
    _check_folder("--report", report)
    prompt_set = classifier_file.prompt_set if classifier_file else _prompt_set(dataset, labels, label, templates)
    show = not quiet and sys.stderr.isatty()
    console = _console() if show else None
    loaded, text = _model_and_text(
        prompt_set, model, pretrained, device, precision, no_cache, show, classifier_file=classifier_file,
        preprocess=preprocess, quiet=quiet,
    )  # fmt: skip
    rule = None
    if multi_label or calibration is not None:
        rule = _multilabel(loaded.spec, text, lambda: loaded, threshold, background.strip(), calibration, quiet)
        multi_label = True
    sheet = None
    if report is not None:
        from .report import ContactSheet

        sheet = ContactSheet(
            report,
            title=f"zeroshot classify: {text.prompt_set.name}",
            subtitle=f"model {loaded.spec.label} · {len(text.classes)} classes",
            max_pixels=max_pixels,
        )
    image_cache = None
    if cache_images:
        from .imagecache import image_cache_key, open_image_cache

        image_cache = open_image_cache(image_cache_key(loaded), loaded.embed_dim)

    stream = iter_inputs(inputs, stdin=sys.stdin if "-" in inputs else None, null=null)
    failed = total = 0
    progress = None
    task = None
    if console is not None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(
            TextColumn("classifying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )  # fmt: skip
        progress.start()
        task = progress.add_task("classify", total=None)
    writer = RecordWriter(fmt, str(output) if output is not None else None, multi_label=multi_label)
    try:
        options = DecodeOptions(workers=workers, decoder=decoder, jpeg_draft=jpeg_draft, max_pixels=max_pixels,
                                max_bytes=max_bytes, timeout=timeout)  # fmt: skip
        records = classify_inputs(
            loaded,
            text,
            stream,
            top_k=top_k,
            batch_size=batch_size or default_batch_size(loaded.device),
            image_cache=image_cache,
            options=options,
            multi_label=rule,
        )
        for record in records:
            record = apply_min_score(record, min_score)
            writer.write(record)
            if sheet is not None:
                sheet.add(record)
            total += 1
            failed += "error" in record
            if progress is not None and task is not None:
                progress.advance(task)
        writer.close()
        if sheet is not None:
            sheet.write()
    finally:
        writer.abort()  # only does something if the run did not finish: no half-written --output file
        if progress is not None:
            progress.stop()
        if image_cache is not None:
            image_cache.close()
    if failed:
        if not quiet:
            sys.stderr.write(f"zeroshot: {failed} of {total} inputs could not be classified\n")
        raise typer.Exit(1)


def _classify_on_ray(inputs: list[str], **o: Any) -> None:
    """``classify --engine ray``: the text classifier is made here, once; Ray's actors classify."""
    from .distributed import OUTPUT_FORMATS, SharedClassifier, require_ray
    from .distributed import run as ray_run

    require_ray()
    if o["output"] is None:
        raise UsageError("--engine ray writes to a folder: give --output DIR")
    if o["fmt"] not in OUTPUT_FORMATS:
        raise UsageError(f"--format with --engine ray must be one of {', '.join(OUTPUT_FORMATS)}, not {o['fmt']!r}")
    for opt, bad in (("--report", o["report"] is not None), ("--cache-images", o["cache_images"]),
                     ("--decoder batched", o["decoder"] == "batched")):  # fmt: skip
        if bad:
            raise UsageError(f"{opt} is not available with --engine ray")
    from .classifier import get_text_classifier
    from .models import load_model

    show = not o["quiet"] and sys.stderr.isatty()
    loaded_box: list[Any] = []

    def load() -> Any:  # on the driver only when the cache misses or a background class is needed
        if not loaded_box:
            with _status(show, f"loading {spec.label} to build the text classifier") as status:
                loaded_box.append(load_model(spec, "cpu", "fp32", downloads=_downloads(o["quiet"], status)))
        return loaded_box[0]

    file = o["classifier_file"]
    spec = _spec_for(file, o["model"], o["pretrained"], o["preprocess"])
    if file is not None:
        text = file.text_classifier()
    else:
        prompt_set = _prompt_set(o["dataset"], o["labels"], o["label"], o["templates"])
        text = get_text_classifier(spec, prompt_set, load, use_cache=not o["no_cache"], precision="fp32")
    rule = None
    if o["multi_label"] or o["calibration"] is not None:
        rule = _multilabel(spec, text, load, o["threshold"], o["background"], o["calibration"], o["quiet"])
    shared = SharedClassifier.build(spec, text, rule)
    summary = ray_run(
        inputs, shared, str(o["output"]), fmt=o["fmt"], address=o["ray_address"], workers=o["workers"] or 1,
        gpus_per_worker=o["gpus_per_worker"], cpus_per_worker=o["cpus_per_worker"], batch_size=o["batch_size"] or 64,
        stdin=sys.stdin if "-" in inputs else None, quiet=o["quiet"], top_k=o["top_k"], precision=o["precision"],
        max_pixels=o["max_pixels"], jpeg_draft=o["jpeg_draft"], min_score=o["min_score"], null=o["null"],
        max_bytes=o["max_bytes"], timeout=o["timeout"],
    )  # fmt: skip
    _write_record(summary)
    if summary.get("errors"):
        if not o["quiet"]:
            sys.stderr.write(f"zeroshot: {summary['errors']} of {summary['records']} inputs could not be classified\n")
        raise typer.Exit(1)


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
    precision: PrecisionOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Prompts per model call.")] = 256,
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
    from . import cache
    from .classifier import get_text_classifier
    from .models import load_model, resolve_device, resolve_precision, resolve_spec

    start = time.perf_counter()
    prompt_set = _prompt_set(dataset, labels, label, templates)
    spec = resolve_spec(model, pretrained, preprocess)
    show = not quiet and sys.stderr.isatty()
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if force:
        from .classifier import text_cache_key

        path = cache.entry_path(cache.key_digest(text_cache_key(spec, prompt_set, prec)))
        path.unlink(missing_ok=True)

    def load() -> Any:
        with _status(show, f"loading {spec.label}") as status:
            loaded = load_model(spec, dev, prec, downloads=_downloads(quiet, status))
        _say_notes(loaded.notes, quiet)
        return loaded

    _check_folder("--output", output)
    text = get_text_classifier(spec, prompt_set, load, batch_size=batch_size, precision=prec)
    if output is not None:
        from .export import save_classifier

        save_classifier(output, spec, prompt_set, text.weights, precision=prec)
    _write_record(
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


@app.command("eval")
@handle_errors
def eval_cmd(
    folder: Annotated[
        Path | None, typer.Argument(help="Folder with one sub-folder of images per class (or use --dataset).")
    ] = None,
    labels: LabelsOpt = None,
    label: LabelOpt = None,
    dataset: DatasetOpt = None,
    templates: TemplatesOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Folder with the dataset's IDX files (default: Debian's location)."),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="IDX split: test or train.")] = "test",
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate only the first N images.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")] = 64,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="Decoding threads (default: a quarter of the cores).")
    ] = None,
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
    max_bytes: MaxBytesOpt = DEFAULT_MAX_BYTES,
    no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Measure accuracy on labelled images; prints one JSON record.

    The record has top-1, top-5, per-class recall, the confusion matrix (rows: true class, columns:
    predicted) and the top-1 of each template alone next to the ensemble's. Exit code 1 if any
    image could not be read (the record still covers the others).
    """
    from .evaluate import evaluate_run, folder_classes
    from .prompts import resolve_prompt_set

    _check_folder("--report", report)
    _check_folder("--calibrate", calibrate)

    if folder is None and dataset is None:
        raise UsageError("give a FOLDER of class sub-folders, or --dataset fashion-mnist")
    if folder is None and not (dataset or "").lower().replace("_", "-").startswith("fashion-mnist"):
        raise UsageError(
            f"--dataset {dataset} without a FOLDER: only fashion-mnist can be read from its IDX files; "
            "give a FOLDER with one sub-folder per class"
        )
    if folder is not None and dataset is None and labels is None and not label:
        # Classes are the sub-folder names, in sorted order.
        prompt_set = resolve_prompt_set(labels=folder_classes(folder), templates_file=templates)
    else:
        prompt_set = _prompt_set(dataset, labels, label, templates)
    show = not quiet and sys.stderr.isatty()
    loaded, text = _model_and_text(
        prompt_set, model, pretrained, device, precision, no_cache, show, preprocess=preprocess, quiet=quiet
    )
    with _status(show, "evaluating"):
        run = evaluate_run(
            loaded, text, folder=folder, idx_dir=data_dir, split=split, limit=limit,
            batch_size=batch_size, workers=workers, max_bytes=max_bytes,
        )  # fmt: skip
    record, failed = run.record, run.failed
    if calibrate is not None:
        record["calibration"] = _calibrate(loaded, text, run, calibrate)
    if report is not None:
        from .report import eval_report

        with _status(show, "writing the report"):
            eval_report(report, run, text, loaded.logit_scale)
        record["report"] = str(report)
    if failed:
        record["errors"] = failed
    _write_record(record)
    if failed:
        raise typer.Exit(1)


def _calibrate(loaded: Any, text: Any, run: Any, path: Path) -> dict[str, Any]:
    """Fit the multi-label calibration on an eval run, write it to ``path``, and say how well it fits."""
    import torch.nn.functional as F

    from .calibration import expected_calibration_error, fit_platt, save_calibration
    from .classifier import multilabel_rule
    from .ranking import multilabel_scores

    if len(run.labels) < 2 or len(text.classes) < 2:
        raise UsageError("--calibrate needs at least 2 labelled images and 2 classes")
    sims = run.sims(text)
    a, b = fit_platt(sims, run.labels, init_scale=loaded.logit_scale)
    present = F.one_hot(run.labels, len(text.classes)).bool()
    before = multilabel_scores(run.feats, text.weights.to(run.feats.device).float(), loaded.logit_scale,
                               multilabel_rule(loaded, text.prompt_set))  # fmt: skip
    after = (a * sims + b).sigmoid()
    info = {
        "a": a,
        "b": b,
        "images": len(run.labels),
        "classes": len(text.classes),
        "ece_uncalibrated": expected_calibration_error(before, present),
        "ece_calibrated": expected_calibration_error(after, present),
    }
    save_calibration(path, loaded.spec, a, b, fitted_on=run.record.get("dataset", ""), prompts=text.prompt_set.name,
                     **{k: v for k, v in info.items() if k not in ("a", "b")})  # fmt: skip
    return {"file": str(path), **info}


@app.command()
@handle_errors
def models(
    sort: Annotated[
        str, typer.Option("--sort", help="model, family, params, size, gflops (smallest first) or top1 (best first).")
    ] = "model",
    family: Annotated[
        str | None, typer.Option("--family", help="Only families whose name contains this (SigLIP, PE-Core, ...).")
    ] = None,
    untagged: Annotated[bool, typer.Option("--all", help="Also architectures without pretrained weights.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per model and tag, for scripts.")] = False,
) -> None:
    """Choose a model: family, parameters, input size, extra packages, published ImageNet top-1 and GFLOPs."""
    from .catalog import RESULTS_SOURCE, SORT_KEYS, catalog, sort_rows

    if sort not in SORT_KEYS:
        raise UsageError(f"--sort {sort}: use one of {', '.join(SORT_KEYS)}")
    rows = catalog(untagged=untagged)
    if family:
        rows = [r for r in rows if family.lower() in r.family.lower()]
        if not rows:
            raise UsageError(f"no family matches '{family}'; `zeroshot models` lists them")
    rows = sort_rows(rows, sort) if sort != "model" else rows
    if as_json:
        for row in rows:
            _write_record(row.record())
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
    from .prompts import datasets as bundled

    packs = bundled()
    if as_json:
        for p in packs:
            _write_record(
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


@app.command("cache")
@handle_errors
def cache_cmd(
    action: Annotated[str | None, typer.Argument(help="show (default) or clear.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Delete every cache entry (same as 'clear').")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Show the cache folder and its entries, or clear them."""
    from . import cache

    if action not in (None, "show", "clear"):
        raise UsageError(f"unknown cache action '{action}': use show or clear")
    root = cache.cache_dir()
    if clear or action == "clear":
        count, freed = cache.clear()
        _write_record({"cache_dir": str(root), "removed": count, "bytes_freed": freed})
        return
    entries = cache.list_entries()
    if as_json:
        _write_record(
            {
                "cache_dir": str(root),
                "entries": [
                    {
                        "file": str(e.path),
                        "bytes": e.size,
                        **{k: v for k, v in e.meta.items() if k != "key"},
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


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    from .models import defer_transformers

    defer_transformers()
    app(prog_name="zeroshot")


if __name__ == "__main__":  # pragma: no cover
    main()
