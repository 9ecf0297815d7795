"""Errors a user can cause. Each carries the exit code the CLI maps it to.

The library raises these and never exits; ``zeroshot.cli`` prints ``str(error)`` as one line on
stderr and exits with ``error.exit_code``.
"""

from __future__ import annotations

# What a command that fails or is interrupted kept, said on its one error line ("1,870 records kept
# in out.jsonl.partial: ..."): added by the code that kept it, printed by the CLI's error handler.
AFTERWORDS: list[str] = []


class ZeroshotError(Exception):
    """Base class: a failure the user can act on. Exit code 1 (runtime failure)."""

    exit_code = 1

    def __str__(self) -> str:
        # Always one line, whatever the underlying cause printed.
        return " ".join(super().__str__().split())


class UsageError(ZeroshotError):
    """The command line or an input file given on it is wrong. Exit code 2."""

    exit_code = 2


class PromptError(UsageError):
    """A labels file, templates file or prompt pack is invalid."""


class UnknownDatasetError(UsageError):
    """``--dataset NAME`` names no known pack."""


class ModelLoadError(ZeroshotError):
    """A model or its weights could not be resolved, fetched or loaded."""


class UnknownModelError(UsageError):
    """``--model``/``--pretrained`` name nothing that exists: an unknown architecture or tag, a
    checkpoint file or model folder that is not there. Exit code 2, as for an unknown dataset."""


class UnsafeCheckpointError(ModelLoadError):
    """A checkpoint file would need an unrestricted unpickler (it may run code)."""


class CacheError(ZeroshotError):
    """A cache entry could not be read or written."""


class OutputError(ZeroshotError):
    """Records could not be written where they go (a full disk, a file over the size limit, an I/O
    error). Exit code 1: the command line was right, the machine refused."""


# Not a ZeroshotError: a per-input message, carried into that input's record; the run goes on.
class ImageError(Exception):
    """An input that cannot be turned into an image; the message is the record's ``error``."""


def os_error(e: OSError) -> ImageError:
    """The record's message for a file that cannot be opened or read."""
    if isinstance(e, FileNotFoundError):
        return ImageError("no such file")
    if isinstance(e, IsADirectoryError):
        return ImageError("is a directory")
    if isinstance(e, PermissionError):
        return ImageError("permission denied")
    return ImageError(f"cannot read ({e.strerror or e})")
