"""The server: one model held warm (:class:`Service`), its FastAPI app (:func:`create_app`), and
uvicorn running it until SIGTERM/SIGINT (:func:`run`).

The model loads through the library (:class:`zeroshot.Zeroshot`: the one assembly), in a thread
once the server listens, so ``/healthz`` answers at once and ``/readyz`` says 503 until the model,
the decode pool and the image tower are warm (one batch has gone through the tower). A load that
fails stops the server, and :func:`run` raises its error: the command prints it as one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ..assembly import ModelChoice

log = logging.getLogger("zeroshot")


@dataclass
class ServeConfig:
    """``zeroshot serve``'s options, checked (see the command's help for each)."""

    choice: ModelChoice = field(default_factory=ModelChoice)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_body_bytes: int = 64 * 1024 * 1024
    max_images: int = 64
    timeout: float = 60.0
    max_pixels: int = 178_956_970
    max_bytes: int = 512 * 1024 * 1024
    api_key: str | None = None
    allow_urls: bool = False
    allow_private_urls: bool = False
    cors_origins: list[str] = field(default_factory=list)
    drain_timeout: float = 10.0
    classifiers: list[Path] = field(default_factory=list)
    text_cache: int = 64
    use_cache: bool = True
    quiet: bool = False


@dataclass
class Classifier:
    """A ``--classifier`` file requests may name: by ``id`` (its file name's stem) or ``digest``."""

    id: str
    digest: str
    text: Any  # its TextClassifier

    def named(self, key: str) -> bool:
        key = key.strip().lower()
        return key == self.id.lower() or key == self.digest or (len(key) >= 12 and self.digest.startswith(key))


class Service:
    """What the routes share: the config, the model and its batcher, the text cache, metrics and
    the server's state (ready, draining)."""

    def __init__(self, config: ServeConfig) -> None:
        from . import metrics
        from .textcache import TextCache

        self.config = config
        self.metrics = metrics.Metrics()
        self.texts = TextCache(config.text_cache, self.metrics)
        self.model: Any = None
        self.scale = 1.0
        self.embed_dim = 0
        self.encoder: Any = None
        self.decoding: Any = None
        self.batcher: Any = None
        self.classifiers: list[Classifier] = []
        self.ready = False
        self.draining = False
        self.failure: BaseException | None = None

    def load(self) -> None:
        """Everything blocking before the warm-up: the model, its tower, the decode pool, the
        classifier files. Runs in a thread."""
        from .. import Zeroshot
        from ..towers.pipeline import DecodeOptions, ImageEncoder
        from .batching import Batcher, DecodePool

        c, choice = self.config, self.config.choice
        self.model = Zeroshot(
            model=choice.model, pretrained=choice.pretrained, device=choice.device, precision=choice.precision,
            preprocess=choice.preprocess, runtime=choice.runtime,
        )  # fmt: skip
        self.scale = self.model.loaded.logit_scale
        self.embed_dim = self.model.loaded.embed_dim
        # (the decoders get bytes only: URL images are fetched by the routes, through the SSRF guard)
        options = DecodeOptions(workers=c.workers, max_pixels=c.max_pixels, max_bytes=c.max_bytes)
        self.encoder = ImageEncoder(self.model.image_tower(), batch_size=c.max_batch, options=options)
        self.batcher = Batcher(self.encoder, max_batch=c.max_batch, max_wait_ms=c.max_wait_ms,
                               max_queue=c.max_queue, metrics=self.metrics)  # fmt: skip
        self.decoding = DecodePool(self.encoder.decoder, self.encoder.workers)
        self.classifiers = [self._classifier(path) for path in c.classifiers]
        self.batcher.start()

    def _classifier(self, path: Path) -> Classifier:
        from ..uses.export import load_classifier

        file = load_classifier(path)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return Classifier(Path(path).stem, digest, self.model.text_classifier(classifier_file=file))

    async def warm(self) -> None:
        """One image through the decode pool and the tower (the first batch pays for lazy setup)."""
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (128, 96, 64)).save(buf, format="PNG")
        ticket = self.batcher.admit(1)
        decoded = await self.decoding.decode([("warm-up.png", buf.getvalue(), None)])
        payload, error = decoded[0]
        if error is not None:
            raise RuntimeError(f"the warm-up image did not decode: {error}")
        futures = self.batcher.submit(ticket, [("warm-up.png", payload)], lambda paths, feats: list(paths))
        await futures[0]

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        if self.decoding is not None:
            self.decoding.close()

    def readiness(self) -> str | None:
        """Why the server is not ready, or None when it is."""
        if self.draining:
            return "shutting down"
        if self.failure is not None:
            return f"the model failed to load: {self.failure}"
        if not self.ready:
            return "loading the model"
        return None


def create_app(config: ServeConfig, service: Service | None = None, on_failure: Any = None) -> FastAPI:
    """The ASGI app for ``config``: routes, guards, and a lifespan that loads the model in a thread
    (``on_failure(error)`` hears of a load that failed) and frees it at the end."""
    from . import limits
    from .routes_classify import router as classify_router
    from .routes_info import router as info_router

    svc = service or Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.ensure_future(_start(svc, on_failure))
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            await asyncio.get_running_loop().run_in_executor(None, svc.close)

    from .. import __version__

    app = FastAPI(
        title="zeroshot",
        version=__version__,
        summary="CLIP zero-shot image classification: labels in, records out.",
        lifespan=lifespan,
    )
    app.state.service = svc
    app.include_router(classify_router)
    app.include_router(info_router)
    # Uploads that trickle in are bounded in time (the request's --timeout), and all uploads in
    # flight together in bytes, so slow or many clients cannot hold unbounded memory.
    limits.install(app, api_key=config.api_key, max_body_bytes=config.max_body_bytes,
                   cors_origins=config.cors_origins, body_timeout=config.timeout,
                   max_inflight_bytes=max(4 * config.max_body_bytes, 256 << 20))  # fmt: skip
    app.add_middleware(_Counted, metrics=svc.metrics)  # outermost: it sees the guard's refusals too
    return app


async def _start(svc: Service, on_failure: Any) -> None:
    from ..base.options import face

    try:
        with face("server"):  # process-wide: the library's messages name request fields
            await asyncio.get_running_loop().run_in_executor(None, svc.load)
            await svc.warm()
    except Exception as e:
        svc.failure = e
        if on_failure is not None:
            on_failure(e)
        return
    svc.ready = True
    if not svc.config.quiet:
        c = svc.config
        sys.stderr.write(f"zeroshot: serving {svc.model.spec.label} on http://{_host(c.host)}:{c.port} "
                         "(API at /docs, page at /)\n")  # fmt: skip
        sys.stderr.flush()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Counted:
    """ASGI middleware telling metrics each request's route, status and time to its last byte (the
    route's template, not the raw path, so the label set stays bounded; "other" for no route)."""

    def __init__(self, app: Any, metrics: Any) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            name = getattr(scope.get("route"), "path", None) or "other"
            self.metrics.request(name, status, time.perf_counter() - start)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is one line (and ``--port 0`` works)."""
    from ..base.errors import ZeroshotError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said outright: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets
    # whose protocol reads as TCP, and with it on, an answer written in two pieces waited for the
    # client's delayed ACK: a lone request took 40 ms longer (benchmarks/serve.py).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ZeroshotError(f"cannot listen on {_host(host)}:{port}: {e.strerror or e}") from None
    return sock


def _close_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def run(config: ServeConfig) -> None:
    """Serve until SIGTERM/SIGINT: stop accepting, answer what is in flight (at most
    ``drain_timeout`` s), return. A model that failed to load raises its error here."""
    import uvicorn

    from ..base.options import face

    svc = Service(config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # uvicorn's own handler re-raises the signal after the graceful stop, which would end
            # the command as "terminated" (143); a stop asked for is a clean exit here.
            svc.draining = True
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    server: Server | None = None

    def failed(error: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    sock = _listen(config.host, config.port)
    # The decoding processes are forked from this one and would hold the listening socket open: after
    # a stop closes it here, new connections would still be taken in (and hang) until they end.
    os.register_at_fork(after_in_child=lambda: _close_quietly(sock))
    config.port = int(sock.getsockname()[1])  # --port 0: the port the system chose, for the ready line
    app = create_app(config, svc, failed)
    uv = uvicorn.Config(
        app, host=config.host, port=config.port, log_level="warning", access_log=False, server_header=False,
        lifespan="on", timeout_graceful_shutdown=config.drain_timeout,  # type: ignore[arg-type]
    )  # fmt: skip
    server = Server(uv)
    try:
        with face("server"):
            server.run(sockets=[sock])
    finally:
        sock.close()
    if svc.failure is not None:
        raise svc.failure
