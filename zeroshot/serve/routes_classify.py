"""``POST /v1/classify`` and ``/v1/embeddings/{images,texts}``: a request's fields parsed into the
choices a command line gives, its images through the batcher, its records (or embeddings) back.

A record is made by the functions the CLI's records come from (:func:`zeroshot.uses.ranking
.feature_records`, :func:`zeroshot.uses.output.apply_min_score`), over features from the same image
core, so it is the record ``zeroshot classify`` prints for the same bytes and text. A request's
fields are checked by the options' one definition (:func:`zeroshot.base.options.check`); a value
the CLI would refuse is a 400 with the library's message, worded for request fields.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .limits import Refusal, queue_full, timed_out, too_many_images

router = APIRouter()

NDJSON = "application/x-ndjson"
MAX_TEXTS = 1024
URL_TIMEOUT = 20.0  # seconds for a URL image's whole fetch, redirects included (the CLI's --timeout default)
CLASSIFY_FIELDS = ("labels", "templates", "dataset", "classifier", "top_k", "multi_label", "threshold",
                   "background", "min_score")  # fmt: skip
INTS, FLOATS, BOOLS = ("top_k",), ("threshold", "min_score"), ("multi_label",)
ENCODINGS = ("float", "base64")

_CLASSIFY_DOC = {
    "requestBody": {
        "content": {
            "application/json": {"example": {"images": [{"data": "<base64 of a.jpg>", "name": "a.jpg"}],
                                             "labels": ["cat", "dog"], "top_k": 2}},
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "labels": {"type": "array", "items": {"type": "string"}},
                "dataset": {"type": "string"}, "top_k": {"type": "integer"}}}},
        }
    }
}  # fmt: skip


class _Gone(Exception):
    """The client went away before its answer was ready."""


@dataclass
class Images:
    """A request's images as decoding's items ``(path, bytes, None)`` (or ``(path, None, error)``
    for one already refused, such as a URL the guard refused), and its other fields."""

    items: list[tuple[str, bytes | None, str | None]]
    urls: list[int]  # indices of items still to be fetched (their path is the URL)
    fields: dict[str, Any]


# --- routes -------------------------------------------------------------------------------------


@router.post("/v1/classify", tags=["classify"], openapi_extra=_CLASSIFY_DOC,
             summary="Classify images against labels, a prompt pack or a classifier file.")  # fmt: skip
async def classify(request: Request) -> Any:
    """One record per image, in order, as ``zeroshot classify`` prints it: ``{"records": [...]}``,
    or JSON Lines as each is done with ``Accept: application/x-ndjson``."""
    svc = _ready(request)
    deadline = asyncio.get_running_loop().time() + svc.config.timeout
    images = await _read_images(request, svc, CLASSIFY_FIELDS)
    score = await _within(request, svc, deadline, _classify_score(svc, images.fields), None)
    return await _answer(request, svc, deadline, images, score, lambda records: {"records": records})


@router.post("/v1/embeddings/images", tags=["embeddings"], summary="L2-normalized image embeddings.")
async def embed_images(request: Request) -> Any:
    """``{"model", "dim", "embeddings": [{"path", "embedding"} | {"path", "error"}, ...]}``: the
    image tower's features, L2-normalized float32, as numbers or ``encoding: base64`` (little-endian
    float32 bytes)."""
    svc = _ready(request)
    deadline = asyncio.get_running_loop().time() + svc.config.timeout
    images = await _read_images(request, svc, ("encoding",))
    as_text = _encoding(images.fields.get("encoding"))

    def score(paths: list[str], features: Any) -> list[Any]:
        rows = _unit_rows(features)
        return [{"path": p, "embedding": as_text(row)} for p, row in zip(paths, rows, strict=True)]

    def whole(entries: list[Any]) -> dict[str, Any]:
        return {"model": svc.model.spec.model, "dim": svc.embed_dim, "embeddings": entries}

    return await _answer(request, svc, deadline, images, score, whole)


@router.post("/v1/embeddings/texts", tags=["embeddings"], summary="L2-normalized text embeddings (no templates).")
async def embed_texts(request: Request) -> Any:
    """JSON ``{"texts": [...], "encoding": "float" | "base64"}`` -> ``{"model", "dim", "embeddings"}``:
    each text through the text tower as it is (no templates), L2-normalized."""
    svc = _ready(request)
    deadline = asyncio.get_running_loop().time() + svc.config.timeout
    body = await _json_body(request)
    _no_unknown(body, ("texts", "encoding"))
    texts = body.get("texts")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise Refusal(400, '"texts" must be a non-empty list of strings')
    if len(texts) > MAX_TEXTS:
        raise Refusal(413, f"request has {len(texts)} texts, over the cap of {MAX_TEXTS}")
    as_text = _encoding(body.get("encoding"))
    loop = asyncio.get_running_loop()
    rows = await _within(request, svc, deadline, loop.run_in_executor(None, svc.model.embed_texts, texts), None)
    return {"model": svc.model.spec.model, "dim": svc.embed_dim, "embeddings": [as_text(r) for r in _unit_rows(rows)]}


# --- the text side and the options --------------------------------------------------------------


async def _classify_score(svc: Any, fields: dict[str, Any]) -> Callable[[list[str], Any], list[Any]]:
    """The request's scoring: its text classifier (cached), multi-label rule and options, checked."""
    from ..assembly import multi_label_from
    from ..base.options import check
    from ..uses.calibration import resolve_multilabel
    from ..uses.output import apply_min_score
    from ..uses.ranking import feature_records

    given = {name: _typed(name, fields.get(name)) for name in (*INTS, *FLOATS, *BOOLS, "background")}
    opts = check(**{**given, "multi_label": False if given["multi_label"] is None else given["multi_label"]})
    wanted = multi_label_from(opts["multi_label"], opts["threshold"], opts["background"], None, opts["min_score"])
    text, key = await _text(svc, fields)
    rule = None
    if wanted is not None:
        model = svc.model
        rule = await svc.texts.get(
            ("rule", key, wanted.threshold, wanted.background),
            lambda: resolve_multilabel(model.spec, text.prompt_set, lambda: model.loaded,
                                       threshold=wanted.threshold, background=wanted.background),
        )  # fmt: skip
    top_k, min_score, scale = opts["top_k"], opts["min_score"], svc.scale

    def score(paths: list[str], features: Any) -> list[Any]:
        made = feature_records(paths, features, text.weights, scale, text.classes, top_k, rule)
        return [apply_min_score(r, min_score) for r in made]

    return score


async def _text(svc: Any, fields: dict[str, Any]) -> tuple[Any, Any]:
    """The request's text classifier and its cache key: a ``--classifier`` file's, or the one for
    its labels / pack / templates (built once, kept in the LRU)."""
    from ..text.promptcheck import validate_templates
    from ..text.prompts import resolve_prompt_set

    labels = _strings(fields, "labels")
    templates = _strings(fields, "templates")
    dataset = _string(fields, "dataset")
    classifier = _string(fields, "classifier")
    if classifier is not None:
        if labels or templates or dataset:
            raise Refusal(400, '"classifier" goes alone: not with "labels", "dataset" or "templates"')
        return _classifier(svc, classifier).text, ("classifier", classifier)
    if not labels and dataset is None:
        raise Refusal(400, 'no labels: give "labels" (one label each), "dataset" (a prompt pack) or "classifier"')
    prompt_set = resolve_prompt_set(dataset=dataset, labels=labels)
    if templates:
        prompt_set = prompt_set.with_templates(validate_templates(templates, '"templates"'),
                                               name=f"{prompt_set.name}+request")  # fmt: skip
    key = ("text", dataset, tuple(labels), tuple(templates))
    model, use_cache = svc.model, svc.config.use_cache
    return await svc.texts.get(key, lambda: model.text_classifier(prompt_set, use_cache=use_cache)), key


def _classifier(svc: Any, key: str) -> Any:
    found = [c for c in svc.classifiers if c.named(key)]
    if len(found) != 1:
        known = ", ".join(c.id for c in svc.classifiers) or "none (start the server with --classifier FILE)"
        what = "ambiguous" if found else "unknown"
        raise Refusal(400, f'{what} "classifier": {key!r}; known ones are {known}')
    return found[0]


def _typed(name: str, value: Any) -> Any:
    """A multipart field's text as the option's type (JSON values are typed already); text that is
    not one stays text, for :func:`~zeroshot.base.options.check` to refuse with its message."""
    if not isinstance(value, str) or name not in (*INTS, *FLOATS, *BOOLS):
        return value
    text = value.strip()
    if name in BOOLS:
        lowered = text.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        return False if lowered in ("false", "0", "no", "off") else value
    try:
        return int(text) if name in INTS else float(text)
    except ValueError:
        return value


def _strings(fields: dict[str, Any], name: str) -> list[str]:
    value = fields.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refusal(400, f'"{name}" must be a list of strings')
    return list(value)


def _string(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if isinstance(value, list):  # a multipart field given once
        value = value[0] if len(value) == 1 else value
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Refusal(400, f'"{name}" must be a string')
    return value


def _encoding(value: Any) -> Callable[[Any], Any]:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if value is None or value == "float":
        return lambda row: row.tolist()
    if value == "base64":
        return lambda row: base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    raise Refusal(400, f'"encoding" must be "float" or "base64", not {value!r}')


def _unit_rows(features: Any) -> Any:
    """[N, D] float32 rows of unit length (normalized in float64)."""
    import numpy as np

    rows = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return (rows / np.where(norms > 0, norms, 1.0)).astype(np.float32)


# --- reading a request's images -----------------------------------------------------------------


def _ready(request: Request) -> Any:
    svc = request.app.state.service
    why = svc.readiness()
    if why is not None:
        raise Refusal(503, f"not ready: {why}", {"Retry-After": "1"})
    return svc


async def _read_images(request: Request, svc: Any, allowed: tuple[str, ...]) -> Images:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        images = await _from_form(request, svc, allowed)
    elif kind == "application/json":
        images = _from_json(await _json_body(request), svc, allowed)
    else:
        raise Refusal(415, f"send images as multipart/form-data or application/json, not {kind or 'no content type'}")
    if not images.items:
        raise Refusal(400, 'no images: send files in "image" (multipart) or "images" (JSON)')
    if len(images.items) > svc.config.max_images:
        raise too_many_images(len(images.items), svc.config.max_images)
    return images


async def _from_form(request: Request, svc: Any, allowed: tuple[str, ...]) -> Images:
    from starlette.datastructures import UploadFile

    try:
        form = await request.form(max_files=svc.config.max_images + 1, max_fields=1000)
    except Exception as e:  # python-multipart's and Starlette's parse errors
        message = str(getattr(e, "detail", e))
        if "too many files" in message.lower():
            raise too_many_images(svc.config.max_images + 1, svc.config.max_images) from None
        raise Refusal(400, f"bad multipart body: {message}") from None
    try:
        items: list[tuple[str, bytes | None, str | None]] = []
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if name == "image":
                if not isinstance(value, UploadFile):
                    raise Refusal(400, '"image" fields must be files')
                items.append((value.filename or f"image-{len(items)}", await value.read(), None))
            elif name in allowed:
                text = value if isinstance(value, str) else ""
                if text.strip() or name in ("labels", "templates"):  # an empty optional field: not given
                    fields.setdefault(name, []).append(text)
            else:
                raise Refusal(400, f"unknown field {name!r}; known ones are image, {', '.join(allowed)}")
    finally:
        await form.close()
    single = {k: v[0] if len(v) == 1 and k not in ("labels", "templates") else v for k, v in fields.items()}
    return Images(items, [], single)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise Refusal(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Refusal(400, "the body must be a JSON object")
    return body


def _from_json(body: dict[str, Any], svc: Any, allowed: tuple[str, ...]) -> Images:
    _no_unknown(body, ("images", *allowed))
    given = body.get("images")
    if given is None:
        given = []
    if not isinstance(given, list):
        raise Refusal(400, '"images" must be a list of {"data", "name"} or {"url"} objects')
    if len(given) > svc.config.max_images:
        raise too_many_images(len(given), svc.config.max_images)
    items: list[tuple[str, bytes | None, str | None]] = []
    urls = []
    for i, image in enumerate(given):
        if not isinstance(image, dict):
            raise Refusal(400, f'images[{i}] must be an object with "data" (base64) or "url"')
        name = image.get("name")
        if name is not None and not isinstance(name, str):
            raise Refusal(400, f"images[{i}].name must be a string")
        if isinstance(image.get("url"), str) and "data" not in image:
            if not svc.config.allow_urls:
                raise Refusal(400, f"images[{i}]: URL images are off on this server (start it with --allow-urls)")
            urls.append(i)
            items.append((image["url"], None, None))
            continue
        data = image.get("data")
        if not isinstance(data, str):
            raise Refusal(400, f'images[{i}] must have "data" (base64 of the file) or "url"')
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise Refusal(400, f"images[{i}].data is not valid base64") from None
        items.append((name or f"image-{i}", raw, None))
    return Images(items, urls, {k: v for k, v in body.items() if k != "images"})


def _no_unknown(body: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = [k for k in body if k not in known]
    if unknown:
        raise Refusal(400, f"unknown field {unknown[0]!r}; known ones are {', '.join(known)}")


# --- through the batcher ------------------------------------------------------------------------


async def _answer(
    request: Request, svc: Any, deadline: float, images: Images, score: Any, whole: Callable[[list[Any]], Any]
) -> Any:
    """Admit, fetch, decode and queue the images; then the whole answer, or NDJSON lines."""
    if len(images.items) > svc.config.max_queue:  # would never fit: not a "retry later"
        raise Refusal(413, f"request has {len(images.items)} images, more than the queue holds "
                           f"(--max-queue {svc.config.max_queue})")  # fmt: skip
    ticket = svc.batcher.admit(len(images.items))
    if ticket is None:
        raise queue_full(svc.config.max_queue)
    try:
        slots = await _within(request, svc, deadline, _queued(svc, ticket, images, score), ticket)
        if NDJSON in request.headers.get("accept", ""):
            return StreamingResponse(_lines(svc, deadline, ticket, images, slots), media_type=NDJSON)
        results = await _within(request, svc, deadline, asyncio.gather(*slots), ticket)
    except _Gone:
        return Response(status_code=499)
    except BaseException:
        ticket.cancel()
        raise
    ticket.close()
    return JSONResponse(whole(results))


async def _queued(svc: Any, ticket: Any, images: Images, score: Any) -> list[asyncio.Future[Any]]:
    """One awaitable per image, in order: its record's future in the batcher, or its error record."""
    from ..uses.ranking import error_record

    items = list(images.items)
    if images.urls:
        fetched = await asyncio.gather(*(_fetch(svc, items[i][0]) for i in images.urls))
        for i, item in zip(images.urls, fetched, strict=True):
            items[i] = item
    decoded = await svc.decoding.decode(items)
    good = [(i, items[i][0], payload) for i, (payload, _) in enumerate(decoded) if payload is not None]
    svc.batcher.release(ticket, len(items) - len(good))  # refused before the queue: their room is free
    futures = iter(svc.batcher.submit(ticket, [(path, payload) for _, path, payload in good], score))
    slots: list[asyncio.Future[Any]] = []
    for (path, _, _), (payload, error) in zip(items, decoded, strict=True):
        slots.append(next(futures) if payload is not None else _done(error_record(path, error or "unknown error")))
    return slots


async def _fetch(svc: Any, url: str) -> tuple[str, bytes | None, str | None]:
    from . import urls

    c = svc.config
    try:
        # A URL image is held whole in memory, as an upload is: no bigger than a request body may be.
        cap = min(c.max_bytes, c.max_body_bytes) if c.max_bytes else c.max_body_bytes
        data = await asyncio.to_thread(urls.fetch, url, allow_private=c.allow_private_urls, max_bytes=cap,
                                       timeout=min(URL_TIMEOUT, c.timeout))  # fmt: skip
    except urls.UrlRefused as e:
        return url, None, e.message
    except OSError as e:  # (the fetcher words its failures as UrlRefused; this is a safety net)
        return url, None, f"cannot fetch: {e}"
    return url, data, None


def _done(value: Any) -> asyncio.Future[Any]:
    """A future already holding ``value`` (an image refused before the queue has its record now)."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


async def _within(request: Request, svc: Any, deadline: float, work: Awaitable[Any], ticket: Any) -> Any:
    """``work``'s result, unless the deadline passes (504) or the client goes (:class:`_Gone`)
    first; then the work is cancelled and the ticket's images still queued are dropped."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        left = max(0.0, deadline - asyncio.get_running_loop().time())
        done, _ = await asyncio.wait({task, gone}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task in done:
        return task.result()
    task.cancel()
    if ticket is not None:
        ticket.cancel()
    if gone in done:
        raise _Gone()
    raise timed_out(svc.config.timeout)


async def _disconnect(request: Request) -> None:
    """Returns when the client has gone (the body is read whole by then: nothing else arrives)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _lines(svc: Any, deadline: float, ticket: Any, images: Images, slots: list[Any]) -> AsyncIterator[bytes]:
    """The records as JSON Lines, each as soon as it and those before it are done. A deadline
    passed mid-stream makes the rest error records (the status line has gone already)."""
    from ..uses.ranking import error_record

    loop = asyncio.get_running_loop()
    expired = False
    try:
        for (path, _, _), slot in zip(images.items, slots, strict=True):
            record = None
            left = deadline - loop.time()
            if not expired and left > 0:
                with contextlib.suppress(TimeoutError):
                    record = await asyncio.wait_for(slot, left)
            if record is None:  # (a slot never resolves to None: records are dicts)
                expired = True
                ticket.cancel()
                record = error_record(path, f"request timed out after {svc.config.timeout:g} s")
            yield (json.dumps(record, ensure_ascii=False) + "\n").encode()
    finally:
        ticket.cancel()  # the client went, or the stream ended: nothing of it stays queued
