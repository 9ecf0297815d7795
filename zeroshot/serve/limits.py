"""The server's guards: the request body cap, the API key, CORS, and every refusal as one line.

Invariants:

- A body over the cap is never held whole: a declared Content-Length over it is refused (413) before
  one byte of the body is read, and a body without a declared length (chunked) is cut off with 413
  as soon as the bytes received pass the cap; the app never sees more than ``max_body_bytes``.
- With an API key configured, every path except ``open_paths`` answers 401 unless the request
  carries ``Authorization: Bearer KEY``; the compare is constant-time. Without a key all is open.
- Every refusal the app makes is ``{"error": "one line"}`` with its status; no traceback ever
  reaches a client (an unexpected exception is logged here and answered 500 with one line).

The guard is a pure ASGI middleware: it passes the app's ``receive``/``send`` messages through one
by one, so streamed answers (NDJSON) stay streamed.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from zeroshot.base.errors import UsageError, ZeroshotError

log = logging.getLogger("zeroshot.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The page at "/" is open too: it holds no data, and a browser cannot send a Bearer header when it
# navigates to it (the page asks for the key and sends it with its API calls).
OPEN_PATHS = ("/healthz", "/readyz", "/")


class Refusal(Exception):
    """A request the server refuses: answered ``{"error": message}`` with ``status`` and ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.message = " ".join(str(message).split())
        self.headers = dict(headers or {})
        super().__init__(self.message)


def queue_full(max_queue: int) -> Refusal:
    """429 for an image that finds ``max_queue`` images already waiting."""
    return Refusal(
        429,
        f"server busy: {max_queue} images already queued (--max-queue {max_queue}); retry later",
        {"Retry-After": "1"},
    )


def timed_out(seconds: float) -> Refusal:
    """504 for a request still unanswered after the server's ``--timeout``."""
    return Refusal(504, f"request timed out after {seconds:g} s (--timeout {seconds:g})")


def too_many_images(count: int, cap: int) -> Refusal:
    """413 for a request carrying more images than ``--max-images``."""
    return Refusal(413, f"request has {count} images, over the cap of {cap} (--max-images {cap})")


def body_too_large(cap: int) -> Refusal:
    """413 for a body over ``--max-body-bytes``."""
    return Refusal(413, f"request body over the cap of {cap} bytes (--max-body-bytes {cap})")


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


async def _answer(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Send a whole ``{"error": ...}`` answer; ``Connection: close`` since the body may be unread."""
    import json

    body = json.dumps({"error": " ".join(message.split())}).encode()
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    head += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _BodyTooLarge(Exception):
    """Raised into the app from ``receive`` once a body passes the cap or its time (the 413 or 408
    is already sent)."""


class Guard:
    """The ASGI middleware: API key first, then the body cap."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        max_body_bytes: int,
        open_paths: Iterable[str],
        body_timeout: float | None = None,
        max_inflight_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.cap = int(max_body_bytes)
        self.open_paths = frozenset(open_paths)
        self.body_timeout = body_timeout
        self.budget = max_inflight_bytes
        self.inflight = 0  # body bytes reserved by requests in progress (touched on the event loop only)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
        if scope["type"] == "websocket":
            # No route takes one today; should one ever, it is not a way around the key.
            if self.key is not None and scope.get("path") not in self.open_paths and not self._authorized(headers):
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        if self.key is not None and scope.get("path") not in self.open_paths and not self._authorized(headers):
            why = "missing API key" if not _header(headers, b"authorization") else "wrong API key"
            await _answer(send, 401, f"{why}: send Authorization: Bearer KEY", {"WWW-Authenticate": "Bearer"})
            return
        declared = _header(headers, b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _answer(send, 400, "bad Content-Length header")
                return
            if int(declared) > self.cap:
                await _answer(send, 413, body_too_large(self.cap).message)
                return
        if self.budget is None:
            await self._capped(scope, receive, send)
            return
        # Each upload may be held whole while it is parsed and served: together they get a budget.
        # A body of unknown length reserves the cap; one request is always let in.
        reserve = int(declared) if declared is not None else (self.cap if _header(headers, b"transfer-encoding") else 0)
        if reserve and self.inflight and self.inflight + reserve > self.budget:
            await _answer(send, 429, "server busy: too many uploads in flight; retry later", {"Retry-After": "1"})
            return
        self.inflight += reserve
        try:
            await self._capped(scope, receive, send)
        finally:
            self.inflight -= reserve

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        values = [v for k, v in headers if k.lower() == b"authorization"]
        if len(values) != 1:
            return False
        scheme, _, token = values[0].strip().partition(b" ")
        assert self.key is not None
        # compare_digest on bytes: the time taken does not depend on where the key first differs.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a ``receive`` that counts body bytes; past the cap (or, with a
        ``body_timeout``, past that many seconds before the body's end) it answers 413 (408) itself
        and raises into the app, and whatever the app sends after that is dropped: the app may turn
        the error into its own answer (FastAPI makes body errors a 400), which must not reach the
        client after the refusal."""
        received = 0
        started = False
        refused = False
        complete = False
        deadline = None if self.body_timeout is None else asyncio.get_running_loop().time() + self.body_timeout

        async def refuse(status: int, message: str) -> None:
            nonlocal refused
            if not refused:
                refused = True
                if not started:
                    await _answer(send, status, message)
            raise _BodyTooLarge()

        async def counting_receive() -> Message:
            nonlocal received, complete
            if deadline is None or complete:
                message = await receive()
            else:
                # A body that trickles in holds a connection and its bytes: it gets the time a
                # whole request gets, not forever.
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - asyncio.get_running_loop().time(), 0))
                except asyncio.TimeoutError:
                    await refuse(408, f"request body not received within {self.body_timeout:g} s")
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.cap:
                    await refuse(413, body_too_large(self.cap).message)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            if not refused:  # pragma: no cover - only counting_receive raises it, after setting refused
                raise
        except Exception:
            if refused:  # the app's own failure over the cut-off body: already answered 413
                return
            raise


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _validation_line(exc: Any) -> str:
    """FastAPI's list of validation errors as one line: the first error's field and reason."""
    errors = list(exc.errors()) if hasattr(exc, "errors") else []
    if not errors:
        return "bad request"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header", "form")]
    where = ".".join(loc)
    msg = str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"bad request: {where}: {msg}{more}" if where else f"bad request: {msg}{more}"


def install(
    app: Any,
    *,
    api_key: str | None,
    max_body_bytes: int,
    cors_origins: list[str],
    open_paths: Iterable[str] = OPEN_PATHS,
    body_timeout: float | None = None,
    max_inflight_bytes: int | None = None,
) -> None:
    """Put the guard (and CORS, only when ``cors_origins`` is non-empty) on a FastAPI ``app``, and
    its error handlers: ``Refusal`` and HTTP errors as ``{"error": ...}``, validation errors as 400
    with one line, the library's usage errors as 400, anything unexpected as 500 with one line.

    ``body_timeout``: the seconds a request's body may take to arrive in full (else 408; None: no
    limit). ``max_inflight_bytes``: the body bytes all requests in progress may hold together (a
    request that would pass it, while others are in progress, is 429 with Retry-After; None: no
    limit). The page at ``/`` is among the default ``open_paths`` (see ``OPEN_PATHS``)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    app.add_middleware(
        Guard,
        api_key=api_key,
        max_body_bytes=max_body_bytes,
        open_paths=tuple(open_paths),
        body_timeout=body_timeout,
        max_inflight_bytes=max_inflight_bytes,
    )
    if cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        # Added after the guard, so it wraps it: a browser's preflight (which carries no key) is
        # answered here, and the guard's 401/413 answers get the CORS headers the page needs to read them.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            expose_headers=["Retry-After"],
        )

    async def on_refusal(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, Refusal)
        return _json_error(exc.status, exc.message, exc.headers)

    async def on_http(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, StarletteHTTPException)
        return _json_error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    async def on_validation(request: Any, exc: Exception) -> Any:
        return _json_error(400, _validation_line(exc))

    async def on_usage(request: Any, exc: Exception) -> Any:
        return _json_error(400, str(exc))

    async def on_library(request: Any, exc: Exception) -> Any:
        return _json_error(500, str(exc))

    async def on_unexpected(request: Any, exc: Exception) -> Any:
        # One line here; Starlette re-raises the exception after this answer so the server logs the traceback.
        log.error("unexpected error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
        return _json_error(500, f"internal server error ({type(exc).__name__}); see the server's log")

    app.add_exception_handler(Refusal, on_refusal)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(UsageError, on_usage)
    app.add_exception_handler(ZeroshotError, on_library)
    app.add_exception_handler(Exception, on_unexpected)
