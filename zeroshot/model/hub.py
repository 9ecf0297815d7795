"""The Hugging Face Hub side of loading: going offline at once when it cannot be reached, and
reporting each file downloaded (:class:`DownloadReport`)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol


def hub_endpoint() -> str:
    """The Hugging Face endpoint in use (``HF_ENDPOINT``, else huggingface.co), as messages show it."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_address() -> tuple[str, int]:
    """(host, port) of the Hugging Face endpoint (``HF_ENDPOINT``, else huggingface.co); an IPv6
    host comes without its brackets (``http://[::1]:8080`` is ``("::1", 8080)``)."""
    from urllib.parse import urlsplit

    parts = urlsplit(hub_endpoint())
    try:
        port = parts.port
    except ValueError:  # a port that is no number: the load itself will say what is wrong
        port = None
    return parts.hostname or "", port or (80 if parts.scheme == "http" else 443)


def reachable(address: tuple[str, int], timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``address`` opens within ``timeout`` seconds (name lookup
    included, which has no timeout of its own: hence the thread)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def hub_reachable() -> bool:
    """Whether the Hugging Face endpoint takes a connection (its name resolves and a TCP connection
    opens within 3 s). Says only: the caller decides to load from the local cache alone
    (:func:`cache_only`, for that load), so nothing changes for the rest of the process."""
    return reachable(hub_address())


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE``, or set by us)."""
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:
        return True
    return bool(hf_constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def cache_only() -> Iterator[None]:
    """huggingface_hub (and transformers through it) in offline mode for a while: files come from
    the local cache or not at all, with no request to the Hub, not even the revision check."""
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:
        yield
        return
    before, env = hf_constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    hf_constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = before
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def in_hub_cache(repo: str, names: tuple[str, ...]) -> bool:
    """Whether the local Hugging Face cache holds one of ``names`` from ``repo`` (a quick look at
    the cache folder, no request): when it does not, loading from the cache alone is not worth a try."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    for name in names:
        try:
            if isinstance(try_to_load_from_cache(repo, name), str):
                return True
        except Exception:  # an odd repository id: let the load itself say what is wrong
            return True
    return False


class DownloadReport(Protocol):
    """What :func:`load_model` tells about each file it downloads (the CLI draws it; a library user
    may pass their own). ``start`` gets what (``org/repo/file``), the size in bytes when known and
    the folder it goes to; ``progress`` the bytes so far; ``end`` whether it completed."""

    def start(self, what: str, size: int | None, dest: str) -> None: ...

    def progress(self, done: int) -> None: ...

    def end(self, ok: bool) -> None: ...


class Tracker:
    """Forwards to another report (if any) and remembers a download that did not complete."""

    def __init__(self, inner: DownloadReport | None) -> None:
        self.inner = inner
        self.current: str | None = None
        self.broken: str | None = None

    def start(self, what: str, size: int | None, dest: str) -> None:
        self.current = what
        if self.inner is not None:
            self.inner.start(what, size, dest)

    def progress(self, done: int) -> None:
        if self.inner is not None:
            self.inner.progress(done)

    def end(self, ok: bool) -> None:
        if not ok:
            self.broken = self.current
        if self.inner is not None:
            self.inner.end(ok)


@contextlib.contextmanager
def reporting_downloads(report: DownloadReport | None) -> Iterator[None]:
    """While open_clip and transformers load, report each file huggingface_hub fetches to ``report``.

    Both fetch through ``huggingface_hub.file_download._download_to_tmp_and_move`` (plain HTTP or
    Xet alike), which is wrapped here; progress is the size of the file being written, read every
    0.2 s. huggingface_hub's own bars are off meanwhile (they would print on stderr in any case).
    """
    if report is None:
        yield
        return
    try:
        from huggingface_hub import constants as hf_constants
        from huggingface_hub import file_download
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:
        yield
        return
    original = file_download._download_to_tmp_and_move

    def wrapped(
        incomplete_path: Path, destination_path: Path, url_to_download: str, headers: Any,
        expected_size: int | None, filename: str, force_download: bool, *args: Any, **kwargs: Any,
    ) -> None:  # fmt: skip
        if os.path.exists(destination_path) and not force_download:
            return original(incomplete_path, destination_path, url_to_download, headers, expected_size, filename,
                            force_download, *args, **kwargs)  # fmt: skip
        where = url_to_download.split("/resolve/", 1)
        what = f"{where[0].split('://', 1)[-1].split('/', 1)[-1]}/{filename}" if len(where) == 2 else filename
        report.start(what, expected_size, str(hf_constants.HF_HUB_CACHE))
        stop = threading.Event()

        def written() -> int:
            # huggingface_hub writes to ``<stem>.<random>.incomplete`` beside ``incomplete_path``
            # (2.x) or to ``incomplete_path`` itself (older): whichever is there.
            part = Path(incomplete_path)
            sizes = [0]
            with contextlib.suppress(OSError):
                sizes += [p.stat().st_size for p in part.parent.glob(f"{part.stem}.*.incomplete")]
            with contextlib.suppress(OSError):
                sizes.append(part.stat().st_size)
            return max(sizes)

        def poll() -> None:
            while not stop.wait(0.2):
                report.progress(written())

        watcher = threading.Thread(target=poll, name="zeroshot-download", daemon=True)
        watcher.start()
        ok = False
        try:
            original(incomplete_path, destination_path, url_to_download, headers, expected_size, filename,
                     force_download, *args, **kwargs)  # fmt: skip
            ok = True
        finally:
            stop.set()
            watcher.join()
            if ok:
                with contextlib.suppress(OSError):
                    report.progress(os.path.getsize(destination_path))
            report.end(ok)

    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()
    file_download._download_to_tmp_and_move = wrapped
    try:
        yield
    finally:
        file_download._download_to_tmp_and_move = original
        if not bars_were_off:
            enable_progress_bars()


# --- why a download failed --------------------------------------------------------------------

NOT_FOUND, NO_NETWORK, OFFLINE_MODE = "not found", "no network", "offline mode"


def failure_cause(e: BaseException, *, user_offline: bool, unreachable: bool) -> tuple[str, str] | None:
    """Why loading from the Hub failed, from the exceptions themselves (open_clip wraps them in a
    RuntimeError; the chain keeps them), never from words in a message (every Hub URL contains
    "resolve"). Returns (cause, detail) or None when the Hub is not the cause:

    - :data:`NOT_FOUND`: the Hub answered that the repository, revision or file does not exist
      (detail: which, ``org/repo`` or ``org/repo/file``);
    - :data:`OFFLINE_MODE`: ``HF_HUB_OFFLINE`` was set by the user and a file is not in the cache;
    - :data:`NO_NETWORK`: the Hub could not be reached (``unreachable``: the probe found it so) or
      the connection failed.
    """
    try:
        from huggingface_hub import errors as hf_errors
    except ImportError:
        return None
    not_found = (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError, hf_errors.EntryNotFoundError)
    local_only = (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)
    connection = (ConnectionError, TimeoutError, socket.gaierror)
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, local_only):  # (a subclass of EntryNotFoundError: asked first)
            return (OFFLINE_MODE if user_offline else NO_NETWORK), ""
        if isinstance(cur, not_found):
            what = "repository" if isinstance(cur, hf_errors.RepositoryNotFoundError) else (
                "revision" if isinstance(cur, hf_errors.RevisionNotFoundError) else "file")  # fmt: skip
            return NOT_FOUND, f"{what} {_hub_path(cur, what)}".strip()
        if isinstance(cur, connection) or type(cur).__name__ in ("ConnectError", "ConnectTimeout", "ReadTimeout"):
            return NO_NETWORK, ""
        cur = cur.__cause__ or cur.__context__
    if user_offline:
        return OFFLINE_MODE, ""
    if unreachable:
        return NO_NETWORK, ""
    return None


def _hub_path(e: BaseException, what: str) -> str:
    """``org/repo`` (or ``org/repo/file`` for a file) from the URL of the Hub's 404 answer."""
    response = getattr(e, "response", None)
    url = str(getattr(response, "url", "") or "")
    if "/resolve/" in url:
        repo, _, rest = url.split("://", 1)[-1].split("/", 1)[-1].partition("/resolve/")
        name = rest.split("/", 1)[1] if "/" in rest else ""
        return f"{repo}/{name}" if what == "file" and name else repo
    if "/api/models/" in url:
        return url.split("/api/models/", 1)[1].split("/revision/", 1)[0].split("/tree/", 1)[0]
    return ""
