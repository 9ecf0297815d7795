"""What the commands share: option declarations, and how the CLI shows things on stderr and stdout."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..assembly import Loading
from ..base.errors import UsageError
from ..model.devices import Precision
from ..towers.runtimes import Runtime

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

    from ..assembly import ModelChoice, MultiLabel, Prepared
    from ..base.files import Destination
    from ..model.models import ModelSpec
    from ..text.prompts import PromptSet
    from ..uses.export import ClassifierFile

# --- shared options -----------------------------------------------------------------------------

InputsArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Image and video files, folders (searched recursively for both), http(s):// URLs, or - to read paths "
        "from stdin (one per line; with -0, NUL-separated)."
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
PrecisionOpt = Annotated[
    Precision,
    typer.Option("--precision", help="auto: fp16 on CUDA, fp32 on the CPU; int8: the CPU engine's int8 image tower."),
]
RuntimeOpt = Annotated[
    Runtime | None,
    typer.Option(
        "--runtime",
        help="Where the image tower runs: auto (ONNX Runtime on the CPU, torch on CUDA), torch or onnx "
        "(exported once, cached). Env: ZEROSHOT_RUNTIME.",
    ),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the text-embedding cache.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display on stderr.")]


def cli_option(name: str, *, help: str | None = None) -> Any:
    """A shared option's ``typer.Option``, from its one definition (:data:`zeroshot.base.options.OPTIONS`):
    its flags and help. Its bounds are not Typer's to check: the value is checked by
    :meth:`~zeroshot.base.options.Option.check` when the run's options are made, as for the library
    and the server, so every face refuses the same values with the same message."""
    from ..base.options import OPTIONS

    option = OPTIONS[name]
    return typer.Option(*option.flags, help=help or option.help)


MaxBytesOpt = Annotated[int | None, cli_option("max_bytes")]
WorkersOpt = Annotated[int | None, cli_option("workers")]


def model_choice(
    model: str | None,
    pretrained: str | None,
    preprocess: str | None,
    device: str,
    precision: Precision,
    runtime: Runtime | None,
) -> ModelChoice:
    """The model options every command shares, as one :class:`~zeroshot.assembly.ModelChoice`."""
    from ..assembly import ModelChoice

    return ModelChoice(model, pretrained, preprocess, device, precision.value, runtime.value if runtime else None)


def prompt_set_from(
    dataset: str | None, labels: Path | None, label: list[str] | None, templates: Path | None
) -> PromptSet:
    from ..text.prompts import resolve_prompt_set

    return resolve_prompt_set(dataset=dataset, labels_file=labels, labels=label or (), templates_file=templates)


def folder_prompt_set(
    folder: Path | None, dataset: str | None, labels: Path | None, label: list[str] | None, templates: Path | None
) -> PromptSet:
    """A labelled folder's classes: the ones asked for, else its sub-folder names (sorted;
    underscores read as spaces, as folders are named: ``ankle_boot/`` is "ankle boot")."""
    if folder is not None and dataset is None and labels is None and not label:
        from ..text.prompts import resolve_prompt_set
        from ..uses.evaluate import folder_classes

        return resolve_prompt_set(labels=folder_classes(folder), templates_file=templates)
    return prompt_set_from(dataset, labels, label, templates)


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def spinner(show: bool, message: str) -> contextlib.AbstractContextManager[Status | None]:
    """A spinner on stderr while something slow runs, only for people at a terminal."""

    return stderr_console().status(message) if show else contextlib.nullcontext()


class Steps:
    """A progress bar on stderr for a count of things (images, prompts): done so far, the total
    once known, the rate and the time left; it disappears when stopped. A no-op unless ``show``
    (a person at a terminal, no --quiet): piped and quiet runs print no progress, and stdout is
    never touched. Thread-safe: a walk counting the inputs may set the total meanwhile."""

    def __init__(self, show: bool, what: str, unit: str, total: int | None = None) -> None:
        self.bar: Any = None
        self.task: Any = None
        if not show:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class Rate(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text(f"{speed:.1f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(), TextColumn("eta"),
            TimeRemainingColumn(), TimeElapsedColumn(), console=stderr_console(), transient=True,
        )  # fmt: skip
        self.what = what
        self.task = self.bar.add_task(what, total=total)
        self.bar.start()

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def found(self, count: int, finished: bool) -> None:
        """The inputs a walk has found so far; with ``finished``, that is the total. (Called from
        the counting thread, perhaps as the bar stops: hence the one read of ``bar``.)"""
        bar = self.bar
        if bar is not None:
            if finished:
                bar.update(self.task, total=count, description=self.what)
            else:
                bar.update(self.task, description=f"{self.what} (counting: {count:,} found)")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def count_in_background(steps: Steps, count: Callable[[Callable[[int], None]], int]) -> None:
    """Run ``count`` (a walk over the inputs, calling back with the number found so far) in a
    daemon thread, giving ``steps`` its total when it ends; nothing at all when nothing is shown."""
    if steps.bar is None:
        return
    import threading

    def run() -> None:
        try:
            total = count(lambda n: steps.found(n, False))
        except Exception:  # a count is only for the display: the run's own walk reports problems
            return
        steps.found(total, True)

    threading.Thread(target=run, name="zeroshot-count", daemon=True).start()


def human_size(n: int | None) -> str:
    """A size as rich writes it, in powers of 1000 ("1 byte", "3.4 MB", "5.0 TB")."""
    from rich.filesize import decimal

    return "size unknown" if n is None else decimal(n)


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters: its start and its end, joined by an ellipsis."""
    if len(text) <= width:
        return text
    tail = (width - 1) * 2 // 3  # the end (a file name) says more than the start
    return text[: width - 1 - tail] + "…" + text[len(text) - tail :]


class Downloads:
    """A :class:`~zeroshot.model.hub.DownloadReport` on stderr: at a terminal a bar per file (bytes,
    rate, time left), pausing the loading spinner meanwhile; otherwise one line per file (what, how
    big, where it goes). stdout is never touched."""

    def __init__(self, tty: bool, status: Status | None = None) -> None:
        self.tty = tty
        self.status = status
        self.bar: Any = None
        self.task: Any = None

    def start(self, what: str, size: int | None, dest: str) -> None:
        if not self.tty:
            sys.stderr.write(f"zeroshot: downloading {what} ({human_size(size)}) into {dest}\n")
            sys.stderr.flush()
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
        from rich.text import Text

        if self.status is not None:
            self.status.stop()
        self.what, self.size, self.began = what, size, time.perf_counter()
        console = stderr_console()
        # Two lines, each fitting the terminal: what is downloaded (shortened in the middle when it
        # must be), then the bar with bytes done/total, rate and time left (under 80 columns).
        title = Text(f"downloading {shorten(what, max(20, console.width - len('downloading ') - 1))}", no_wrap=True)

        class TwoLines(Progress):
            def get_renderables(self) -> Any:
                yield title
                yield self.make_tasks_table(self.tasks)

        self.bar = TwoLines(
            BarColumn(bar_width=min(30, max(10, console.width - 48))), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=console,
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
                sys.stderr.write(f"zeroshot: downloaded {self.what}: {human_size(self.size)} in {took:.1f} s "
                                 f"({human_size(int(self.size / took))}/s)\n")  # fmt: skip
            if self.status is not None:
                self.status.start()


def downloads_display(quiet: bool, status: Status | None = None) -> Downloads | None:
    """The download display for a command (None with --quiet)."""
    return None if quiet else Downloads(sys.stderr.isatty(), status)


class CliLoading(Loading):
    """How the CLI shows a model load: a spinner and download bars at a terminal, notes on stderr."""

    def __init__(self, show: bool, quiet: bool) -> None:
        self.show, self.quiet = show, quiet

    @contextlib.contextmanager
    def model(self, spec: ModelSpec, device: str, precision: str) -> Iterator[Downloads | None]:
        with spinner(self.show, f"loading {spec.label} on {device} ({precision})") as status:
            yield downloads_display(self.quiet, status)

    def notes(self, notes: list[str]) -> None:
        say_notes(notes, self.quiet)

    @contextlib.contextmanager
    def engine(self, spec: ModelSpec, precision: str) -> Iterator[None]:
        message = f"preparing the CPU engine for {spec.label} ({precision}), once"
        if self.show:
            with spinner(True, message):
                yield
            return
        if not self.quiet:
            sys.stderr.write(f"zeroshot: note: {message}\n")
            sys.stderr.flush()
        yield

    def prompts(self, total: int) -> Callable[[int], None] | None:
        if not self.show:
            return None
        steps = Steps(True, "encoding prompts", "prompts", total)
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            steps.advance(n)
            if done[0] >= total:
                steps.stop()

        return advance


def prepare_run(
    choice: ModelChoice,
    prompt_set: PromptSet | None,
    *,
    classifier_file: ClassifierFile | None = None,
    multi_label: MultiLabel | None = None,
    quiet: bool,
    use_cache: bool = True,
    refresh: bool = False,
    eager: bool = True,
    batch_size: int = 256,
) -> Prepared:
    """:func:`zeroshot.assembly.prepare` with the CLI's display; says on stderr when --multi-label
    scores are not calibrated."""
    from ..assembly import prepare
    from ..uses.ranking import DEFAULT_BACKGROUND

    show = not quiet and sys.stderr.isatty()
    prepared = prepare(
        choice, None if classifier_file is not None else prompt_set, classifier_file=classifier_file,
        multi_label=multi_label, loading=CliLoading(show, quiet), use_cache=use_cache, refresh=refresh, eager=eager,
        batch_size=batch_size,
    )  # fmt: skip
    rule = prepared.rule
    if multi_label is not None and rule is not None and not quiet:
        if rule.kind == "background":
            sys.stderr.write(
                "zeroshot: note: --multi-label scores are not calibrated for this model (label vs. "
                f"'{multi_label.background or DEFAULT_BACKGROUND}'); eval --calibrate FILE fits a calibration "
                "to pass with --calibration\n"
            )
        elif rule.kind == "model" and multi_label.background is not None:
            sys.stderr.write(
                f"zeroshot: note: --background {multi_label.background} is not used: {prepared.spec.label} scores "
                "each label with its own learned logit bias\n"
            )
    return prepared


def open_classifier_file(
    classifier: Path | None, labels: Path | None, label: list[str] | None, dataset: str | None, templates: Path | None
) -> ClassifierFile | None:
    """The ``--classifier`` file, read and checked, or None; it excludes the other class options."""
    if classifier is None:
        return None
    from ..uses.export import load_classifier

    if labels is not None or label or dataset is not None or templates is not None:
        raise UsageError("--classifier brings its own classes: drop --labels/--label/--dataset/--templates")
    return load_classifier(classifier)


def say_notes(notes: list[str], quiet: bool) -> None:
    """What loading inferred (a checkpoint file's preprocessing, QuickGELU): one line each on stderr."""
    if not quiet:
        for note in notes:
            sys.stderr.write(f"zeroshot: note: {note}\n")
        sys.stderr.flush()


def output_destination(option: str, path: Path | str | None, *, allow_stdout: bool = False) -> Destination | None:
    """A file option's destination, checked before any work is done (see
    :func:`zeroshot.base.files.destination`): an existing folder, a missing or unwritable folder is a
    usage error; ``-`` is stdout where ``allow_stdout``."""
    if path is None:
        return None
    from ..base.files import destination

    return destination(option, path, allow_stdout=allow_stdout)


def write_record(record: dict[str, Any]) -> None:
    line = json.dumps(record, ensure_ascii=False)
    try:
        data = line.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not valid UTF-8: escape it instead
        data = json.dumps(record, ensure_ascii=True).encode("ascii")
    out = sys.stdout.buffer
    out.write(data + b"\n")
    out.flush()


# --- commands -----------------------------------------------------------------------------------
