"""The command line: ``app`` (Typer), ``main``, and ``run`` (the console script: ``main``, then a
fast exit). One module per command group; :mod:`.app` owns errors and exit codes, :mod:`.common`
the shared options and display."""

from . import adapting, build, classify, evaluation, listing, serve  # noqa: F401  (registers the commands on app)
from .app import app, main, run
from .helptext import dress

dress(app)  # option groups and examples in --help, for every command registered above

__all__ = ["app", "main", "run"]
