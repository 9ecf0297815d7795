"""A real ``zeroshot serve`` process for tests: on a free loopback port, ready when /readyz says
so, stopped by SIGTERM (then SIGKILL); and a small HTTP helper over :mod:`http.client`.

Every wait here is bounded: a server that never gets ready, or never stops, fails the test with
its stderr instead of hanging the suite."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listened on a moment ago (the OS's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(
    method: str,
    url: str,
    body: bytes | str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request: (status, headers with lower-case names, the whole body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=dict(headers or {}))
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


def post_json(url: str, payload: Any, headers: Mapping[str, str] | None = None, timeout: float = 60.0):
    """POST ``payload`` as JSON: (status, headers, the answer parsed, or the raw bytes if not JSON)."""
    status, head, data = request(
        "POST", url, json.dumps(payload), {"Content-Type": "application/json", **(headers or {})}, timeout
    )
    try:
        return status, head, json.loads(data)
    except ValueError:
        return status, head, data


def multipart(fields: Sequence[tuple[str, str | tuple[str, bytes]]]) -> tuple[bytes, str]:
    """A multipart/form-data body: ``(name, text)`` fields and ``(name, (filename, bytes))`` files;
    returns (body, its Content-Type)."""
    boundary = "zeroshot-test-" + os.urandom(8).hex()
    out = bytearray()
    for name, value in fields:
        out += f"--{boundary}\r\n".encode()
        if isinstance(value, tuple):
            filename, data = value
            out += f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
            out += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class Server:
    """``python -m zeroshot serve --port P ARGS...`` in the repository, with ``env``.

    ``url`` is ``http://127.0.0.1:P``; :meth:`stop` ends it (SIGTERM, then SIGKILL after
    ``stop_timeout``) and returns its exit code; a context manager stops it on the way out.
    stderr goes to a temporary file (a pipe nobody reads could fill and stall the server)."""

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 120.0,
        stop_timeout: float = 20.0,
        wait_ready: bool = True,
    ) -> None:
        self.args = [str(a) for a in args]
        self.env = dict(os.environ if env is None else env)
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed in __exit__)
        self._stdout = tempfile.TemporaryFile()  # noqa: SIM115
        for attempt in range(5):  # another process may take the port between our pick and the bind
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            self._start()
            if not wait_ready:
                return
            try:
                self.wait_ready(ready_timeout)
                return
            except _PortTaken:
                if attempt == 4:
                    raise
                self._stderr.seek(0)
                self._stderr.truncate()

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zeroshot", "serve", "--port", str(self.port), *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=self._stdout,
            stderr=self._stderr,
        )

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stdout(self) -> str:
        self._stdout.seek(0)
        return self._stdout.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until ``GET /readyz`` answers 200; fails (with the server's stderr) if it exits or the
        deadline passes first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                err = self.stderr()
                if "address already in use" in err.lower():
                    raise _PortTaken(err)
                pytest.fail(f"zeroshot serve exited with {code} before it was ready:\n{err}", pytrace=False)
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _, _ = request("GET", self.url + "/readyz", timeout=5)
                if status == 200:
                    return
            time.sleep(0.1)
        self.kill()
        pytest.fail(f"zeroshot serve was not ready within {timeout:g} s:\n{self.stderr()}", pytrace=False)

    def terminate(self) -> None:
        """SIGTERM, without waiting (a graceful stop: in-flight requests are answered)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        assert self.proc is not None
        return self.proc.wait(self.stop_timeout if timeout is None else timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM and wait ``stop_timeout`` s, then SIGKILL; the exit code (None if it was killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.terminate()
        try:
            return self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return request("GET", self.url + path, **kw)

    def get_json(self, path: str, **kw: Any) -> tuple[int, Any]:
        status, _, data = self.get(path, **kw)
        return status, json.loads(data)

    def post_json(self, path: str, payload: Any, **kw: Any):
        return post_json(self.url + path, payload, **kw)

    def metrics(self, headers: Mapping[str, str] | None = None) -> str:
        status, _, data = self.get("/metrics", headers=headers)
        assert status == 200, data
        return data.decode()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._stderr.close()
        self._stdout.close()


class _PortTaken(Exception):
    pass


def metric(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The value of one sample in Prometheus text (0 when absent): ``name`` with exactly ``labels``
    among its labels (any others allowed)."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, rest = head.partition("{")
        if sample != name:
            continue
        have = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
        have = {k.strip(): v.strip().strip('"') for k, v in have.items()}
        if all(have.get(k) == v for k, v in (labels or {}).items()):
            total += float(value)
            found = True
    return total if found else 0.0


def server_env(cache_dir: Path | str, **extra: str) -> dict[str, str]:
    """The environment a server in a test runs with: its own cache folder, the torch runtime unless
    ``extra`` says otherwise (as the suite's other runs), no model defaults."""
    env = dict(os.environ)
    env.pop("ZEROSHOT_MODEL", None)
    env.pop("ZEROSHOT_PRETRAINED", None)
    env.pop("ZEROSHOT_API_KEY", None)
    env["ZEROSHOT_CACHE_DIR"] = str(cache_dir)
    env.setdefault("ZEROSHOT_RUNTIME", "torch")
    env.update(extra)
    return env
