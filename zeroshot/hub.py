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


def hub_address() -> tuple[str, int]:
    """(host, port) of the Hugging Face endpoint (``HF_ENDPOINT``, else huggingface.co)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    scheme, _, rest = endpoint.rpartition("://")
    netloc = rest.split("/", 1)[0]
    host, _, port = netloc.rpartition(":") if netloc.count(":") == 1 else (netloc, "", "")
    return host, int(port) if port.isdigit() else (80 if scheme == "http" else 443)


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


def go_offline_if_unreachable() -> bool:
    """Put huggingface_hub in offline mode when its host does not resolve.

    Offline, the hub client still serves files already in its local cache but fails at once for the
    rest, instead of retrying for a minute (transformers' tokenizers too: open_clip #968). Returns
    True when the network is unusable: the endpoint's name does not resolve or it takes no connection.
    """
    with contextlib.suppress(ImportError):
        import huggingface_hub.constants as hf_constants

        if hf_constants.HF_HUB_OFFLINE:
            return True
        if not reachable(hub_address()):
            hf_constants.HF_HUB_OFFLINE = True
            os.environ["HF_HUB_OFFLINE"] = "1"  # for transformers, which may read it itself
            return True
    return False


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
