"""Writing files so that nobody ever sees half of one: caches, classifier and calibration files,
reports and the model table all go through :func:`atomic_write_bytes` (``--output`` records, which
stream, use the same temporary-file-then-rename steps in :class:`zeroshot.output.RecordWriter`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def umask_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask), for files made with mkstemp (0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes, *, shared: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never half.

    ``shared``: give the file the usual permissions (umask), as for files the user hands on
    (reports, exported classifiers); otherwise it stays private to the user (0o600), as cache files do.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if shared:
            os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
