"""Writing files so that nobody ever sees half of one, and writing where the user points.

Caches and the model table go through :func:`atomic_write_bytes`. Files the user names on the
command line (``--output``, ``--manifest``, ``--report``, classifier and calibration files) are
checked up front by :func:`destination` and written through :class:`OutputFile`: a regular file
atomically (through a symlink to its target), a FIFO, character device or ``/dev/fd/N`` in place,
``-`` to stdout. A file written atomically is first a temporary file this process creates
(:func:`create_new`: a fresh name, ``O_EXCL``, never through a symlink); one that replaces an
existing file takes that file's mode and, where permitted, its owner (:func:`take_place_of`), as a
shell's ``>`` leaves them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Creating a file that is new for certain: never an existing one, never through a symlink.
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def create_new(folder: Path, prefix: str, suffix: str = ".tmp", *, mode: int = 0o666) -> tuple[int, Path]:
    """A file of a fresh name in ``folder`` that this call creates (``O_EXCL``: never a file that was
    there, never a symlink's target), open for writing: (descriptor, path).

    ``mode`` less the umask, which the kernel takes off as it creates the file: 0o666 gives the usual
    permissions of a user's file, 0o600 a private one. Nothing reads the umask, so nothing has to set
    it and back (which races with any thread creating a file meanwhile).
    """
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(path, _NEW, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder} for {prefix}*{suffix}")


def take_place_of(fd: int, target: Path) -> None:
    """Before the file open at ``fd`` is renamed over ``target``: give it the mode of the regular file
    it replaces and, where this process may, its owner and group (as ``>`` would have kept them). A
    new ``target`` keeps the mode it was created with; the permission bits only (never set-id bits)."""
    try:
        st = os.lstat(target)
    except OSError:
        return
    if not stat.S_ISREG(st.st_mode):
        return
    mine = os.fstat(fd)
    if (mine.st_uid, mine.st_gid) != (st.st_uid, st.st_gid) and hasattr(os, "fchown"):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except OSError:  # only root gives a file away; a member of the group may still keep that
            with contextlib.suppress(OSError):
                os.fchown(fd, -1, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o777)  # after chown, which may clear mode bits


def atomic_write_bytes(path: Path, data: bytes, *, shared: bool = False, sync_folder: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never half:
    a temporary file of a fresh name beside it (created exclusively), synced, renamed over it.

    ``shared``: give the file the usual permissions (umask), as for files the user hands on
    (reports, exported classifiers); otherwise it stays private to the user (0o600), as cache files do.
    ``sync_folder``: make the rename itself durable too (a file rewritten after every batch, whose
    folder another sync covers, may leave it out).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_new(path.parent, f".{path.name}.", mode=0o666 if shared else 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_folder:
        _sync_folder(path.parent)


# --- files the user names (--output, --manifest, --report, -o FILE) ---------------------------

# Paths that name one of this process's own file descriptors: written through a duplicate of it,
# exactly as the shell's redirection left it (its offset, its append mode), never reopened.
_FD_PATH = re.compile(r"^/(?:dev/fd|proc/self/fd|proc/thread-self/fd)/(\d+)$")
_STD_NAMES = {"/dev/stdout": 1, "/dev/stderr": 2}


@dataclass(frozen=True)
class Destination:
    """Where a file option writes, decided (and checked) before any work is done.

    - ``stdout``: the option was ``-``;
    - ``fd``: a path naming one of this process's descriptors (``/dev/stdout``, ``/dev/fd/N``, as a
      shell's ``>(...)`` gives): written through a duplicate of it;
    - ``stream``: an existing file that is not a regular file (a FIFO, a character device such as
      ``/dev/null``): opened and written in place, as the shell's ``>`` would;
    - otherwise ``target`` is a regular file (existing or not), written through a temporary file
      beside it and renamed over it, so nobody sees half of it. Symlinks are followed: the link
      stays, its target gets the content.
    """

    option: str
    given: str
    target: Path
    stdout: bool = False
    fd: int | None = None
    stream: bool = False

    @property
    def named(self) -> str:
        """How messages name it: the option and the path as given."""
        return f"{self.option} {self.given}".strip()

    @property
    def regular(self) -> bool:
        """Written atomically (a temporary file renamed into place)."""
        return not (self.stdout or self.stream or self.fd is not None)

    def __str__(self) -> str:
        return self.given

    def open(self) -> OutputFile:
        """The open destination; see :class:`OutputFile`."""
        return OutputFile(self)

    def write_bytes(self, data: bytes) -> None:
        """Write the whole of ``data`` (atomically for a regular file); a failure is a
        :class:`~zeroshot.base.errors.UsageError` naming the file, and leaves no temporary file."""
        from .errors import UsageError

        out = self.open()
        try:
            out.stream.write(data)
            out.commit()
        except OSError as e:
            raise UsageError(f"cannot write {self.named}: {e.strerror or e}") from None
        finally:
            out.discard()


def write_named(path: str | os.PathLike[str] | Destination, data: bytes, option: str = "") -> None:
    """Write a file the user named (a report, a classifier or calibration file, a manifest): checked
    by :func:`destination` unless it already was, then :meth:`Destination.write_bytes`."""
    dest = path if isinstance(path, Destination) else destination(option, path)
    dest.write_bytes(data)


def destination(option: str, path: str | os.PathLike[str], *, allow_stdout: bool = False) -> Destination:
    """Check a file option's path before any work is done; UsageError (exit 2) when it cannot be
    written: an existing folder, a missing or unwritable folder, a socket or block device."""
    from .errors import UsageError

    given = os.fspath(path)
    named = f"{option} {given}".strip()
    if given == "-":
        if not allow_stdout:
            raise UsageError(f"{named}: stdout carries this command's own output here; give a file name")
        return Destination(option, given, Path(given), stdout=True)
    if not given:
        raise UsageError(f"{option} is empty: give a file name")
    fd = _own_descriptor(given)
    if fd is not None:
        return Destination(option, given, Path(given), fd=fd)
    try:
        st: os.stat_result | None = os.stat(given)  # follows symlinks: what the name leads to
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UsageError(f"{named}: cannot write there ({e.strerror or e})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{named} is a folder: give a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISSOCK(st.st_mode) or stat.S_ISBLK(st.st_mode):
            kind = "a socket" if stat.S_ISSOCK(st.st_mode) else "a block device"
            raise UsageError(f"{named} is {kind}: refusing to write into it")
        if not os.access(given, os.W_OK):
            raise UsageError(f"{named}: cannot write there (permission denied)")
        return Destination(option, given, Path(given), stream=True)
    target = Path(os.path.realpath(given))  # a symlink's target (a dangling one's too)
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{named}: its folder does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{named}: cannot write there (permission denied on {folder})")
    if st is not None and not os.access(target, os.W_OK):  # renaming over it would work; `>` would not
        raise UsageError(f"{named}: cannot write there (the file is read-only)")
    return Destination(option, given, target)


def _own_descriptor(path: str) -> int | None:
    """The descriptor ``path`` names in this process (``/dev/stdout``, ``/dev/fd/63``), if open."""
    fd = _STD_NAMES.get(path)
    if fd is None:
        match = _FD_PATH.match(path)
        if match is None:
            return None
        fd = int(match.group(1))
    try:
        os.fstat(fd)
    except OSError:
        return None
    return fd


class OutputFile:
    """A :class:`Destination` opened for writing: ``stream`` takes the bytes; :meth:`commit` ends
    the write (for a regular file: flush, fsync, rename into place); :meth:`discard`, after a
    failure or an interrupt, drops an uncommitted temporary file and leaves the old file as it was."""

    def __init__(self, dest: Destination, *, shared: bool = True) -> None:
        from .errors import UsageError

        self.dest = dest
        self.tmp: Path | None = None
        self.owned = True  # closed by us (not stdout)
        self.flush_each = not dest.regular  # pipes and terminals get each piece as it is written
        try:
            if dest.stdout:
                self.stream: IO[bytes] = sys.stdout.buffer
                self.owned = False
            elif dest.fd is not None:
                self.stream = os.fdopen(os.dup(dest.fd), "wb")
            elif dest.stream:
                # O_WRONLY without O_CREAT: the node exists; a FIFO waits for its reader, as `>` does.
                self.stream = os.fdopen(os.open(dest.target, os.O_WRONLY | os.O_CLOEXEC), "wb")
            else:
                # The user's file: the usual permissions (a private one for shared=False), or at
                # commit those of the file it replaces.
                fd, self.tmp = create_new(dest.target.parent, f".{dest.target.name}.", mode=0o666 if shared else 0o600)
                self.stream = os.fdopen(fd, "wb")
        except OSError as e:
            raise UsageError(f"{dest.named}: cannot write there ({e.strerror or e})") from None

    def commit(self) -> None:
        self.stream.flush()
        if self.tmp is not None:
            take_place_of(self.stream.fileno(), self.dest.target)
            os.fsync(self.stream.fileno())
            self.stream.close()
            os.replace(self.tmp, self.dest.target)
            self.tmp = None
            _sync_folder(self.dest.target.parent)
        elif self.owned:
            self.stream.close()

    def discard(self) -> None:
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                self.stream.close()
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
        elif self.owned and not self.stream.closed:
            with contextlib.suppress(OSError):  # a reader that went away: nothing more reaches it
                self.stream.close()


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows it
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
