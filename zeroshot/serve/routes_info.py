"""What the server says about itself: health, readiness, metrics, the loaded model, the prompt
packs, and the web page."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

router = APIRouter()


def _service(request: Request) -> Any:
    return request.app.state.service


@router.get("/healthz", tags=["health"], summary="Alive: the process answers.")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="Ready: the model and the image tower are warm (else 503).")
async def readyz(request: Request) -> Any:
    why = _service(request).readiness()
    if why is not None:
        return JSONResponse({"error": f"not ready: {why}"}, status_code=503)
    return {"status": "ready"}


@router.get("/metrics", tags=["health"], summary="Prometheus text (0.0.4).", response_class=PlainTextResponse)
async def metrics(request: Request) -> Any:
    return PlainTextResponse(_service(request).metrics.render(), media_type="text/plain; version=0.0.4")


@router.get("/v1/models", tags=["models"], summary="The loaded model and the classifier files requests may name.")
async def models(request: Request) -> Any:
    from .limits import Refusal

    svc = _service(request)
    if svc.model is None:
        raise Refusal(503, f"not ready: {svc.readiness() or 'loading the model'}")
    m = svc.model
    return {
        "model": m.spec.model,
        "pretrained": m.spec.pretrained,
        "label": m.spec.label,
        "device": str(m.device),
        "runtime": m.runtime,
        "precision": m.precision,
        "embed_dim": svc.embed_dim,
        "logit_scale": svc.scale,  # scores are softmax(logit_scale * image . text) over unit embeddings
        "classifiers": [{"id": c.id, "digest": c.digest, "classes": list(c.text.classes)} for c in svc.classifiers],
    }


@router.get("/v1/datasets", tags=["models"], summary="The prompt packs a request may name as its dataset.")
async def datasets() -> dict[str, Any]:
    return {"datasets": _packs()}


@cache
def _packs() -> list[dict[str, Any]]:
    from ..text.prompts import datasets as bundled

    return [{"name": p.name, "classes": len(p.classes), "templates": len(p.templates)} for p in bundled()]


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
async def page() -> Any:
    return HTMLResponse(_page())


@cache
def _page() -> str:
    try:
        return resources.files("zeroshot.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return "<!doctype html><title>zeroshot</title><p>The web page is missing from this install; see /docs."
