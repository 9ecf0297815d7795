"""The command line: ``app`` (Typer) and ``main`` (the console script). One module per command
group; :mod:`.app` owns errors and exit codes, :mod:`.common` the shared options and display."""

from . import adapting, build, classify, evaluation, listing  # noqa: F401  (registers the commands on app)
from .app import app, main

__all__ = ["app", "main"]
