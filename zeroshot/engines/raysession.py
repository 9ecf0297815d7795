"""The Ray session a ``classify --engine ray`` run works in, and its stdout kept for the summary."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def ray_session(ray: Any, address: str | None, quiet: bool) -> Iterator[None]:
    """The Ray this process has, or one joined/started here and shut down at the end."""
    import logging

    if quiet:  # Ray Data's own lines (execution plans, timings, "progress bars disabled") on stderr
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=not quiet)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 (and ``sys.stdout``) at stderr for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
