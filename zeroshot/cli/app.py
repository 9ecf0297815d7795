"""The command line: parse options, call the library, print. Errors become one stderr line.

Exit codes: 0 success; 1 an input failed or a runtime error; 2 a usage error; 130/143 interrupted
by SIGINT/SIGTERM; 141 stdout closed early (e.g. ``| head``), which ends the run quietly.
torch and open_clip are imported only inside commands that need them, so ``--help`` is fast.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from ..base.errors import ZeroshotError

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
    from ..base.errors import AFTERWORDS

    message = "; ".join([message, *AFTERWORDS])
    AFTERWORDS.clear()
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
        from ..base.options import face

        try:
            with face("cli"):  # the library's messages name options as flags (--every, not every=)
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

    # The command line says what it has to say in its own one-line messages (the "zeroshot" logger),
    # never through Python's warnings: those come from the libraries it uses (Pillow on large images
    # and odd palettes, timm and torch on deprecations, the ONNX exporter on tracing) and say nothing
    # a user of this command can act on. The library leaves warnings to its caller.
    warnings.simplefilter("ignore")


# Libraries that log on their own handlers (transformers, huggingface_hub) or through the root
# logger (open_clip): a command's stderr carries only its own lines. Process-wide, as the command
# line owns its process; the library changes no logging of its caller's.
_QUIET_LOGGERS = ("transformers", "huggingface_hub", "timm", "open_clip", "torch", "onnx", "onnxruntime")


def _setup_logging() -> None:
    # open_clip logs through the root logger; a handler there keeps Python's last-resort
    # stderr handler from printing its chatter. Our own messages go through "zeroshot".
    logging.getLogger().addHandler(logging.NullHandler())
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    # transformers and huggingface_hub set their loggers' level from these when first imported
    # (later, and only for a model that needs them); a user's own setting is kept.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "critical")
    os.environ.setdefault("HF_HUB_VERBOSITY", "critical")
    ours = logging.getLogger("zeroshot")
    ours.handlers[:] = [_StderrLineHandler()]
    ours.setLevel(logging.WARNING)
    ours.propagate = False


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__

        sys.stdout.write(f"zeroshot {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """CLIP zero-shot image classification: labels in, JSON Lines out."""
    _setup_logging()
    _setup_warnings()


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    from ..model.fastload import lean_open_clip

    lean_open_clip()
    try:
        code = app(prog_name="zeroshot", standalone_mode=False)
    except Exception as e:
        # Option-parsing errors (click's UsageError family: an unknown option, a value out of range
        # or not among the choices) become one line, like every other error; Typer would draw a box.
        message = getattr(e, "format_message", None)
        if message is None or not isinstance(getattr(e, "exit_code", None), int):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # `zeroshot` alone: the help, as it is
            sys.stderr.write(message() + "\n")
        else:
            sys.stderr.write(f"zeroshot: error: {' '.join(message().split())} (see zeroshot -h)\n")
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    sys.exit(code if isinstance(code, int) else 0)


def run() -> None:
    """The console script (and ``python -m zeroshot``): :func:`main`, then a fast exit.

    After the last record, Python's own teardown of torch's module graph takes another 0.5 s on a
    2-core CPU (a fifth of a one-image run). By then every command has closed what it opened
    (output files, worker pools, caches) and written everything, so the streams are flushed and the
    process leaves with ``os._exit``, skipping that teardown. Where something may still need it (the
    Ray engine's shutdown hooks, a thread that is not a daemon), the exit is the ordinary one.
    """
    try:
        main()
        code: object = 0
    except SystemExit as e:
        code = e.code
    if code is not None and not isinstance(code, int):
        raise SystemExit(code)  # a message: Python prints it
    _leave(code or 0)


def _leave(code: int) -> None:
    import contextlib
    import threading

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing more reaches it
            stream.flush()
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if "ray" in sys.modules or any(t.is_alive() for t in others):
        sys.exit(code)
    os._exit(code)
