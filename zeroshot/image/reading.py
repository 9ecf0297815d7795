"""Reading one input's bytes without ever hanging or holding more than the byte cap.

What reads an input's bytes reads them through here: the decoding workers (an image whole; a video
or an animated image as a capped file object handed to FFmpeg or Pillow), the image cache's and
``adapt``'s hashing, a video's planning, its download and the sniffing of a file named without a
video extension, ``eval``'s image folders, and the contact sheets' thumbnails. Two readers do not:
``eval``'s IDX arrays (:mod:`zeroshot.image.idx`: the dataset's own files, read whole), and Ray's
reader for the URIs (``s3://...``) the Ray engine is given (``read_binary_files``; the byte cap is
applied to what it delivers). The rules:

- **Only regular files.** The open is non-blocking and checked with ``fstat`` on the descriptor
  that is then read, so neither a FIFO, device or socket, nor a path swapped for one after a
  check elsewhere, can block. A name is a file, never anything else (FFmpeg is handed the open
  file, never the name).
- **A byte cap** (``--max-bytes``, ``--max-video-bytes`` for videos): refused on the size the file
  declares, and enforced while reading, for a file that grows, lies about its size or has none.
- **URLs** (``http://``, ``https://``): a connect and read timeout, an overall deadline, the same
  byte cap (on ``Content-Length`` and while reading), at most :data:`MAX_REDIRECTS` redirects,
  and one-line messages for HTTP errors, time-outs and pages that are not images. A video's body
  goes to a file a block at a time (:func:`url_blocks`).

This module imports nothing heavy: it runs in forked decoding workers.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import time
from collections.abc import Iterator
from typing import Any

from ..base.errors import ImageError, os_error
from ..base.options import DEFAULT_MAX_BYTES as DEFAULT_MAX_BYTES  # why 512 MiB: there
from ..base.options import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT  # seconds to connect, and between two reads
from ..base.options import named

DEADLINE_FACTOR = 6  # a whole download may take this many timeouts (2 minutes by default)
MAX_REDIRECTS = 5
CHUNK = 1 << 20
USER_AGENT = "zeroshot"

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def is_url(value: str) -> bool:
    """``http://`` or ``https://`` (any case): an input fetched over the network."""
    return value[:8].lower().startswith(("http://", "https://"))


def kind_problem(mode: int) -> str | None:
    """The record's message for a file that is not a regular file, from its ``st_mode``; else None."""
    if stat.S_ISREG(mode):
        return None
    for test, name in _KINDS:
        if test(mode):
            return "is a directory" if name == "a directory" else f"not a regular file: {name}"
    return "not a regular file"


def too_large(size: int, max_bytes: int, option: str | None = None) -> ImageError:
    """The record's message for an input over its byte cap, naming the option the cap comes from."""
    return ImageError(f"too large: {size:,} bytes, over the {option or named('max_bytes')} limit of {max_bytes:,}")


def _grew(max_bytes: int, option: str | None = None) -> ImageError:
    return ImageError(f"too large: more than the {option or named('max_bytes')} limit of {max_bytes:,} bytes")


def _open_regular(path: str, max_bytes: int | None, option: str | None = None) -> int:
    """A file descriptor of a regular file within the cap, opened without blocking."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise os_error(e) from None
    try:
        st = os.fstat(fd)
        problem = kind_problem(st.st_mode)
        if problem is not None:
            raise ImageError(problem)
        if max_bytes and st.st_size > max_bytes:
            raise too_large(st.st_size, max_bytes, option)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _chunks(fd: int, max_bytes: int | None, option: str | None = None) -> Iterator[bytes]:
    total = 0
    while True:
        try:
            block = os.read(fd, CHUNK)
        except BlockingIOError:  # cannot happen on a regular file; never spin on one that does
            raise ImageError("not a regular file") from None
        except OSError as e:
            raise os_error(e) from None
        if not block:
            return
        total += len(block)
        if max_bytes and total > max_bytes:
            raise _grew(max_bytes, option)
        yield block


def read_file(path: str, max_bytes: int | None = DEFAULT_MAX_BYTES) -> bytes:
    """The whole content of a regular file, at most ``max_bytes`` (None or 0: no cap)."""
    fd = _open_regular(path, max_bytes)
    try:
        return b"".join(_chunks(fd, max_bytes))
    finally:
        os.close(fd)


def file_digest(path: str, max_bytes: int | None = DEFAULT_MAX_BYTES) -> str:
    """SHA-256 of a regular file's content, read a block at a time (memory stays at one block)."""
    fd = _open_regular(path, max_bytes)
    try:
        return _digest(fd, max_bytes)
    finally:
        os.close(fd)


def _digest(fd: int, max_bytes: int | None, option: str | None = None) -> str:
    digest = hashlib.sha256()
    for block in _chunks(fd, max_bytes, option):
        digest.update(block)
    return digest.hexdigest()


class CappedFile(io.FileIO):
    """A regular file opened by :func:`open_file`, read as a binary file object (what FFmpeg and
    Pillow are handed): a read that would end past the cap is refused with the cap's message, so
    the cap holds for a file that grows after its size was checked, whoever reads and seeks."""

    def __init__(self, fd: int, path: str, max_bytes: int | None, option: str | None) -> None:
        super().__init__(fd, "rb", closefd=True)
        self.name = path  # FFmpeg's and Pillow's hint at the format, never opened
        self.max_bytes = max_bytes
        self.option = option

    def read(self, size: int | None = -1) -> bytes:
        try:
            block = super().read(size)
        except BlockingIOError:  # cannot happen on a regular file; never spin on one that does
            raise ImageError("not a regular file") from None
        except OSError as e:
            raise os_error(e) from None
        if self.max_bytes and block and self.tell() > self.max_bytes:
            raise _grew(self.max_bytes, self.option)
        return block or b""

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def digest(self) -> str:
        """SHA-256 of the whole file (read from its start, within the cap; the position is kept)."""
        at = self.tell()
        self.seek(0)
        try:
            return _digest(self.fileno(), self.max_bytes, self.option)
        finally:
            self.seek(at)


def open_file(path: str, max_bytes: int | None = DEFAULT_MAX_BYTES, option: str | None = None) -> CappedFile:
    """``path`` opened for reading as a :class:`CappedFile`: a regular file (the open never blocks;
    checked with ``fstat`` on the descriptor that is read), its size within ``max_bytes`` (None or
    0: no cap), ``option`` the name a refusal gives the cap."""
    fd = _open_regular(path, max_bytes, option)
    try:
        return CappedFile(fd, path, max_bytes, option)
    except BaseException:
        os.close(fd)
        raise


def read_input(path: str, max_bytes: int | None = DEFAULT_MAX_BYTES, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """The bytes of one input: a URL fetched, or a regular file read; :class:`ImageError` otherwise."""
    if is_url(path):
        return fetch_url(path, max_bytes, timeout)
    return read_file(path, max_bytes)


# --- URLs ---------------------------------------------------------------------------------------


def _opener() -> Any:
    import urllib.request

    class Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = MAX_REDIRECTS
        max_repeats = 2  # a loop between two addresses ends after its second round

        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            if not is_url(newurl):  # no redirect to file:// or ftp://
                raise ImageError(f"redirected to {newurl.split(':', 1)[0]}://, which is not fetched")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    # No proxy handler from the environment is removed: users behind a proxy need it.
    return urllib.request.build_opener(Redirects())


def fetch_url(url: str, max_bytes: int | None = DEFAULT_MAX_BYTES, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """GET ``url`` with the timeouts, the byte cap and the redirect limit; one-line errors."""
    return b"".join(url_blocks(url, max_bytes, timeout))


def url_blocks(
    url: str, max_bytes: int | None = DEFAULT_MAX_BYTES, timeout: float = DEFAULT_TIMEOUT, option: str | None = None
) -> Iterator[bytes]:
    """GET ``url``'s body a block (at most :data:`CHUNK` bytes) at a time, with the timeouts, the
    overall deadline, the byte cap (``option`` names it in a refusal) and the redirect limit;
    :class:`ImageError` with a one-line message when any of them stops it."""
    import http.client
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + DEADLINE_FACTOR * timeout
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    try:
        with _opener().open(request, timeout=timeout) as response:
            ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            length = response.headers.get("Content-Length")
            if max_bytes and length and length.isdigit() and int(length) > max_bytes:
                raise too_large(int(length), max_bytes, option)
            if ctype.startswith("text/") or ctype in ("application/json", "application/xhtml+xml"):
                raise ImageError(f"not an image (the server sent {ctype})")
            total = 0
            while True:
                if time.monotonic() > deadline:
                    raise ImageError(f"timed out: the download took over {DEADLINE_FACTOR * timeout:g} s")
                block = response.read1(CHUNK) if hasattr(response, "read1") else response.read(CHUNK)
                if not block:
                    return
                total += len(block)
                if max_bytes and total > max_bytes:
                    raise _grew(max_bytes, option)
                yield block
    except ImageError:
        raise
    except urllib.error.HTTPError as e:
        if 300 <= e.code < 400:
            raise ImageError(f"too many redirects (more than {MAX_REDIRECTS}, or a loop)") from None
        raise ImageError(f"HTTP error {e.code} ({e.reason})") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise ImageError(f"timed out after {timeout:g} s") from None
        reason = getattr(e.reason, "strerror", None) or str(e.reason)
        raise ImageError(f"cannot fetch ({' '.join(reason.split())})") from None
    except TimeoutError:
        raise ImageError(f"timed out after {timeout:g} s") from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # a reset, a malformed URL or response
        text = " ".join(str(e).split()) or type(e).__name__
        raise ImageError(f"cannot fetch ({text})") from None
