"""``zeroshot serve``: its options, checked into one :class:`~zeroshot.serve.app.ServeConfig`.

fastapi and uvicorn are imported inside the command only, so no other command pays for them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..base.errors import UsageError
from ..base.options import DEFAULT_MAX_PIXELS, check
from ..model.devices import Precision
from .app import app, handle_errors
from .common import (
    DeviceOpt,
    MaxBytesOpt,
    ModelOpt,
    NoCacheOpt,
    PrecisionOpt,
    PreprocessOpt,
    PretrainedOpt,
    QuietOpt,
    RuntimeOpt,
    WorkersOpt,
    cli_option,
    model_choice,
)

MIB = 1024 * 1024
LOOPBACK = ("127.0.0.1", "::1", "localhost")


# Long, on purpose: Typer reads the options from the signature; the body builds one ServeConfig.
@app.command()
@handle_errors
def serve(
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    preprocess: PreprocessOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.AUTO,
    runtime: RuntimeOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    workers: WorkersOpt = None,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Images per model call, gathered across requests.")
    ] = 32,
    max_wait_ms: Annotated[
        float,
        typer.Option("--max-wait-ms", min=0, help="How long a model batch waits for more images after its first."),
    ] = 5.0,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, help="Images waiting for the model at most; more get 429.")
    ] = 256,
    max_body_bytes: Annotated[
        int, typer.Option("--max-body-bytes", min=1, help="Largest request body (default 64 MiB); more get 413.")
    ] = 64 * MIB,
    max_images: Annotated[int, typer.Option("--max-images", min=1, help="Images per request at most.")] = 64,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds a request may take; then 504.")] = 60.0,
    max_pixels: Annotated[int, cli_option("max_pixels")] = DEFAULT_MAX_PIXELS,
    max_bytes: MaxBytesOpt = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="ZEROSHOT_API_KEY",
            show_envvar=False,
            help="Requests must send Authorization: Bearer KEY (not /healthz, /readyz). Env: ZEROSHOT_API_KEY.",
        ),
    ] = None,
    allow_urls: Annotated[
        bool, typer.Option("--allow-urls", help="Accept http(s) URLs as images (public addresses only).")
    ] = False,
    allow_private_urls: Annotated[
        bool,
        typer.Option("--allow-private-urls", help="With --allow-urls: also loopback, private and link-local ones."),
    ] = False,
    cors_origin: Annotated[
        list[str] | None, typer.Option("--cors-origin", help="A web origin allowed to call the API; repeatable.")
    ] = None,
    drain_timeout: Annotated[
        float,
        typer.Option("--drain-timeout", min=0, help="On SIGTERM/SIGINT: seconds to answer requests in flight."),
    ] = 10.0,
    classifier: Annotated[
        list[Path] | None,
        typer.Option(
            "--classifier",
            help="A classifier file (build-prompts -o) requests may name by its file name's stem or its "
            "sha256; repeatable.",
        ),
    ] = None,
    text_cache: Annotated[
        int, typer.Option("--text-cache", min=1, help="Label sets whose text classifiers are kept in memory.")
    ] = 64,
    no_cache: NoCacheOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Serve the model over HTTP: classify and embed images, with labels or a prompt pack per request.

    Endpoints under /v1 (classify, embeddings, models, datasets), /healthz, /readyz, /metrics, the
    API's page at /docs and a web page at /. Images of concurrent requests share model batches.
    Needs zeroshot-clip\\[serve].
    """
    check(workers=workers, max_pixels=max_pixels, max_bytes=max_bytes)
    if allow_private_urls and not allow_urls:
        raise UsageError("--allow-private-urls applies only with --allow-urls")
    try:
        from ..serve.app import ServeConfig, run
    except ImportError as e:
        raise UsageError(
            f"zeroshot serve needs the serve extra ({e.name or 'fastapi'} is missing): "
            "pip install 'zeroshot-clip[serve]'"
        ) from None
    from ..base.options import DEFAULT_MAX_BYTES

    if host not in LOOPBACK and not api_key:
        import sys

        sys.stderr.write(
            f"zeroshot: warning: listening on {host} without --api-key: anyone who can reach it can use it\n"
        )
    config = ServeConfig(
        choice=model_choice(model, pretrained, preprocess, device, precision, runtime),
        host=host, port=port, workers=workers, max_batch=max_batch, max_wait_ms=max_wait_ms,
        max_queue=max_queue, max_body_bytes=max_body_bytes, max_images=max_images, timeout=timeout,
        max_pixels=max_pixels, max_bytes=DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
        api_key=api_key or None, allow_urls=allow_urls, allow_private_urls=allow_private_urls,
        cors_origins=list(cors_origin or ()), drain_timeout=drain_timeout, classifiers=list(classifier or ()),
        text_cache=text_cache, use_cache=not no_cache, quiet=quiet,
    )  # fmt: skip
    run(config)
