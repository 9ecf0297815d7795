"""A client of ``zeroshot serve``: the same records as a local run, from a model that stays warm.

::

    from zeroshot.client import Client

    server = Client("http://127.0.0.1:8000")          # api_key: ZEROSHOT_API_KEY unless given
    for record in server.classify(["cat.jpg", "dog.png"], labels=["cat", "dog"]):
        print(record["path"], record["label"], record["score"])

Standard library only (``http.client``), and of zeroshot only :mod:`zeroshot.base`, so it runs
where torch is not installed. What it promises:

- **The records a local run prints**, in the order of the images given, one per image; the
  server's numbers untouched. A record's ``path`` is the path given; for an image in memory,
  ``names[i]``, else ``image-N`` (N: the image's index in the call), as the library's
  ``Zeroshot.classify``.
- **Local files are read here**, as the command line reads them (regular files only, opened without
  blocking, within the byte cap), and sent as multipart files: the server never reads its own disk
  for a request. A file that cannot be read is its error record, with the command line's message,
  and is not sent.
- **A refusal is a** :class:`ServerError` (a :class:`~zeroshot.base.errors.ZeroshotError`) carrying
  the HTTP status and the server's one line; a server that cannot be reached is one too (status
  None), naming the URL.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import secrets
import socket
import ssl
import stat
import sys
import urllib.parse
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .base.errors import ImageError, UsageError, ZeroshotError, os_error
from .base.options import DEFAULT_MAX_BYTES, named

API_KEY_ENV = "ZEROSHOT_API_KEY"
NDJSON = "application/x-ndjson"
_KINDS = "a path, encoded bytes, a PIL image or a numpy array"
DEFAULT_CHUNK = 16  # images per request: within the server's --max-images (64), records flow early
_READ_BLOCK = 1 << 20

# Modes a PNG holds exactly; TIFF (uncompressed) holds these others exactly; any other mode is
# converted to RGB(A) first, as no lossless format Pillow writes keeps it.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})
_TIFF_MODES = frozenset({"I", "F", "CMYK", "YCbCr", "LAB", "PA"})


class ServerError(ZeroshotError):
    """The server refused a request (``status``: 400, 401, 413, 429, 503, 504, ...), or could not be
    reached (``status`` None). ``str(error)`` is one line: the server's own message when it gave
    one. ``retry_after``: seconds the server asked to wait (429), else None. A 400 is the request's
    fault, as a usage error is the command line's: exit code 2; anything else 1."""

    def __init__(self, status: int | None, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())
        self.retry_after = retry_after
        self.exit_code = 2 if status == 400 else 1


@dataclass(frozen=True)
class _Upload:
    """One image to send: the name its record will carry and the bytes of an encoded image."""

    name: str
    data: bytes


class Client:
    """A ``zeroshot serve`` at ``url`` (``http://`` or ``https://``, with any path prefix a proxy
    adds). ``api_key`` (default: ``$ZEROSHOT_API_KEY``; empty: none) is sent as ``Authorization:
    Bearer``. ``timeout``: seconds to connect, and to wait for each part of an answer. ``max_bytes``:
    the cap on a local file read for sending (the command line's ``--max-bytes``; default 512 MiB).
    ``chunk``: images per request (a call with more sends several, one after the other; the
    server's ``--max-images`` must allow it).

    Each call opens its own connection, so one client may be shared by threads."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 60,
        *,
        max_bytes: int | None = None,
        chunk: int = DEFAULT_CHUNK,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"the server's URL must be http://HOST[:PORT] or https://..., not {url!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        try:
            self._port = parts.port
        except ValueError:
            raise UsageError(f"the server's URL has a bad port: {url!r}") from None
        self._prefix = parts.path.rstrip("/")
        self.api_key = os.environ.get(API_KEY_ENV) if api_key is None else api_key
        self.timeout = timeout
        self.max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise UsageError(f"chunk must be a whole number of at least 1, not {chunk!r}")
        self.chunk = chunk

    # --- the API ---------------------------------------------------------------------------------

    def classify(
        self,
        images: Iterable[Any],
        labels: Sequence[str] | None = None,
        dataset: str | None = None,
        templates: Sequence[str] | None = None,
        classifier: str | None = None,
        top_k: int = 5,
        multi_label: bool = False,
        threshold: float | None = None,
        background: str | None = None,
        min_score: float | None = None,
        names: Sequence[str | None] | None = None,
    ) -> list[dict[str, Any]]:
        """One record per image, in order, as ``zeroshot classify`` prints it (same keys, the same
        numbers for the same image bytes and text). ``images``: paths (read here), encoded image
        bytes (``bytes``/``bytearray``/``memoryview``), PIL images, or numpy arrays (HxW, HxWx3/4
        uint8). A PIL image or array is sent as PNG, which the server decodes to the same pixels,
        so its record equals a local ``Zeroshot.classify`` of that image (modes PNG cannot hold
        exactly, such as CMYK, I or F, go as uncompressed TIFF; HSV and the premultiplied modes are
        converted to RGB(A) first). The text side is exactly one of ``labels`` (with ``templates``),
        ``dataset`` (a prompt pack's name; with ``labels``, its templates over those labels) or
        ``classifier`` (a ``--classifier`` file's id on the server)."""
        fields = _text_fields(
            labels, dataset, templates, classifier, top_k, multi_label, threshold, background, min_score
        )
        return list(self._chunks(self._parts(images, names), "/v1/classify", fields, stream=False))

    def classify_stream(
        self,
        images: Iterable[Any],
        labels: Sequence[str] | None = None,
        dataset: str | None = None,
        templates: Sequence[str] | None = None,
        classifier: str | None = None,
        top_k: int = 5,
        multi_label: bool = False,
        threshold: float | None = None,
        background: str | None = None,
        min_score: float | None = None,
        names: Sequence[str | None] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """:meth:`classify`'s records, yielded as the server streams them (JSON Lines): each as soon
        as it and those before it are done. Closing the iterator early closes the connection."""
        fields = _text_fields(
            labels, dataset, templates, classifier, top_k, multi_label, threshold, background, min_score
        )
        return self._chunks(self._parts(images, names), "/v1/classify", fields, stream=True)

    def embed_images(self, images: Iterable[Any], names: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
        """One entry per image, in order: ``{"path", "embedding": [D floats]}`` (L2-normalized, the
        model's image embedding) or ``{"path", "error"}``. ``images`` as :meth:`classify`'s."""
        fields = [("encoding", "float")]
        return list(self._chunks(self._parts(images, names), "/v1/embeddings/images", fields, stream=False))

    def embed_texts(self, texts: Sequence[str]) -> list[list[float]]:
        """Each text's embedding (L2-normalized, the raw text through the text tower: no templates)."""
        if isinstance(texts, str):
            raise UsageError("texts must be a list of strings, not one string")
        body = json.dumps({"texts": list(texts), "encoding": "float"}).encode()
        answer = self._call("POST", "/v1/embeddings/texts", body, "application/json")
        return list(_listed(answer, "embeddings", len(texts)))

    def models(self) -> dict[str, Any]:
        """The loaded model: ``{"model", "pretrained", "label", "device", "runtime", "precision",
        "embed_dim", "classifiers"}``."""
        answer = self._call("GET", "/v1/models")
        if not isinstance(answer, dict):
            raise ServerError(200, f"{self.url}/v1/models answered something other than a JSON object")
        return answer

    def datasets(self) -> list[dict[str, Any]]:
        """The server's prompt packs: ``[{"name", "classes", "templates"}, ...]``."""
        return list(_listed(self._call("GET", "/v1/datasets"), "datasets"))

    def ready(self) -> bool:
        """Whether the server answers ``/readyz`` with 200 (warm, not draining); False when it answers
        anything else or cannot be reached."""
        try:
            self._call("GET", "/readyz")
        except ServerError:
            return False
        return True

    # --- images to parts --------------------------------------------------------------------------

    def _parts(self, images: Any, names: Sequence[str | None] | None) -> Iterator[Any]:
        """As the library's ``Zeroshot.classify`` takes them: one path or image alone is one input; a
        path's record keeps its path, an image in memory is ``names[i]`` (None: ``image-N``). Read
        and encoded lazily, so memory holds one request's images whatever the count."""
        if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or _is_memory(images):
            images = [images]
        listed = None if names is None else list(names)
        if listed is not None and hasattr(images, "__len__") and len(listed) != len(images):
            raise UsageError(f"names has {len(listed)} entries for {len(images)} images")

        def parts() -> Iterator[Any]:
            for i, image in enumerate(images):
                if listed is not None and i >= len(listed):
                    raise UsageError(f"names has {len(listed)} entries: too few for the images")
                yield self._part(image, i, None if listed is None else listed[i])

        return parts()

    def _part(self, image: Any, index: int, name: str | None) -> Any:
        if isinstance(image, (str, os.PathLike)):
            path = os.fsdecode(image)
            try:
                return _Upload(path, read_local(path, self.max_bytes))
            except ImageError as e:
                return {"path": path, "error": str(e)}
        name = f"image-{index}" if name is None else name
        if isinstance(image, (bytes, bytearray, memoryview)):
            return _Upload(name, bytes(image))
        if not _is_memory(image):
            raise TypeError(f"each image must be {_KINDS}, not {type(image).__name__}: {image!r}"[:300])
        try:
            return _Upload(name, encode_image(image))
        except ImageError as e:
            return {"path": name, "error": str(e)}

    # --- requests --------------------------------------------------------------------------------

    def _chunks(
        self, parts: Iterable[Any], route: str, fields: list[tuple[str, str]], stream: bool
    ) -> Iterator[dict[str, Any]]:
        """One answer per part, in order: a record known here as it is, an image's from the server,
        ``chunk`` images per request; None among the parts sends the images held at once (a live
        stream's pause). A record known here with nothing held before it comes out at once."""
        held: list[Any] = []
        sending = 0
        for part in parts:
            if part is not None:
                if not held and not isinstance(part, _Upload):
                    yield part
                    continue
                held.append(part)
                sending += isinstance(part, _Upload)
            if held and (part is None or sending >= self.chunk):
                yield from self._send(route, held, fields, stream)
                held, sending = [], 0
        if held:
            yield from self._send(route, held, fields, stream)

    def _send(
        self, route: str, held: list[Any], fields: list[tuple[str, str]], stream: bool
    ) -> Iterator[dict[str, Any]]:
        uploads = [p for p in held if isinstance(p, _Upload)]
        body, content_type = _multipart(uploads, fields)
        if not stream:
            answer = self._call("POST", route, body, content_type)
            key = "records" if route == "/v1/classify" else "embeddings"
            yield from _merged(held, iter(_listed(answer, key, len(uploads))))
            return
        with self._open("POST", route, body, content_type, accept=NDJSON) as response:
            lines = self._lines(response, len(uploads))
            yield from _merged(held, lines)
            for _ in lines:  # records past those expected: _lines raises on the count
                pass

    def _lines(self, response: http.client.HTTPResponse, expected: int) -> Iterator[dict[str, Any]]:
        """The records of an NDJSON answer, each parsed as its line arrives."""
        count = 0
        while True:
            try:
                line = response.readline()
            except (OSError, http.client.HTTPException) as e:
                raise self._unreachable(e, "while reading the records") from None
            if not line:
                break
            if not line.strip():
                continue
            record = _json(line, self.url)
            if not isinstance(record, dict) or "path" not in record:
                # A failure the server could only tell after the answer began: its one line.
                message = record.get("error") if isinstance(record, dict) else None
                raise ServerError(_status_of(record), str(message or "the server sent a line that is not a record"))
            count += 1
            yield record
        if count != expected:
            raise ServerError(response.status, f"the server sent {count} records for {expected} images")

    def _call(self, method: str, route: str, body: bytes | None = None, content_type: str | None = None) -> Any:
        with self._open(method, route, body, content_type) as response:
            try:
                data = response.read()
            except (OSError, http.client.HTTPException) as e:
                raise self._unreachable(e, "while reading the answer") from None
        return _json(data, self.url)

    @contextlib.contextmanager
    def _open(
        self,
        method: str,
        route: str,
        body: bytes | None = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> Iterator[http.client.HTTPResponse]:
        """The response to one request with status 200, its connection closed on the way out; any
        other status raised as :class:`ServerError` with the server's line."""
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        headers = {"Accept": accept, "User-Agent": "zeroshot-client"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            try:
                response = self._exchange(connection, method, route, body, headers)
            except (OSError, http.client.HTTPException) as e:
                raise self._unreachable(e) from None
            if response.status != 200:
                raise self._refusal(response)
            yield response
        finally:
            connection.close()

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        route: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> http.client.HTTPResponse:
        """Send the request and read the answer's head. A server may refuse a body before it has
        read it all (413 from Content-Length) and close: the refusal is read even so."""
        connection.putrequest(method, self._prefix + route, skip_accept_encoding=True)
        if body is not None:
            headers = {**headers, "Content-Length": str(len(body))}
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        try:
            view = memoryview(body or b"")
            for start in range(0, len(view), _READ_BLOCK):
                connection.send(view[start : start + _READ_BLOCK])
        except (BrokenPipeError, ConnectionResetError) as e:
            try:
                return connection.getresponse()
            except (OSError, http.client.HTTPException):
                raise e from None
        return connection.getresponse()

    def _refusal(self, response: http.client.HTTPResponse) -> ServerError:
        try:
            data = response.read(64 * 1024)
        except (OSError, http.client.HTTPException):
            data = b""
        message = _error_line(data) or f"{response.status} {response.reason}".strip()
        retry = response.getheader("Retry-After")
        try:
            retry_after = float(retry) if retry is not None else None
        except ValueError:
            retry_after = None
        return ServerError(response.status, message, retry_after)

    def _unreachable(self, e: BaseException, when: str = "") -> ServerError:
        if isinstance(e, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(e, (socket.timeout, TimeoutError)):
            why = f"no answer within {self.timeout:g} s"
        elif isinstance(e, socket.gaierror):
            why = f"unknown host {self._host!r}"
        else:
            why = " ".join(str(e).split()) or type(e).__name__
        return ServerError(None, f"cannot reach the zeroshot server at {self.url}{' ' + when if when else ''}: {why}")


# --- classify --server ---------------------------------------------------------------------------


def classify_remotely(
    url: str,
    items: Iterable[tuple[str, str | None] | None],
    *,
    labels: Sequence[str] | None = None,
    dataset: str | None = None,
    templates: Sequence[str] | None = None,
    classifier: str | None = None,
    top_k: int = 5,
    multi_label: bool = False,
    threshold: float | None = None,
    background: str | None = None,
    min_score: float | None = None,
    api_key: str | None = None,
    timeout: float = 60,
    max_bytes: int | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> Iterator[dict[str, Any]]:
    """``zeroshot classify --server URL``: one record per item, in the items' order, each the record
    a local run prints. ``items``: ``(path, error)`` pairs as the inputs' walk gives them (an
    ``error`` becomes that path's error record here, unsent), or None where a live stream has
    nothing more for now (the images held are sent at once, so their records come out while the
    producer writes). Files are read here (the command line's rules and messages: an unreadable one
    is its error record) and sent ``chunk`` images per request, streamed back. A refusal raises
    :class:`ServerError`; the records yielded before it stand. URLs are not fetched for a server:
    such an input is an error record saying so."""
    client = Client(url, api_key, timeout, max_bytes=max_bytes, chunk=chunk)
    fields = _text_fields(labels, dataset, templates, classifier, top_k, multi_label, threshold, background, min_score)

    def parts() -> Iterator[Any]:
        for item in items:
            if item is None:
                yield None
                continue
            path, error = item
            if error is None and path[:8].lower().startswith(("http://", "https://")):
                error = "a URL is not sent to a server: download it, or classify it without --server"
            yield {"path": path, "error": error} if error is not None else client._part(path, 0, None)

    return client._chunks(parts(), "/v1/classify", fields, stream=True)


# --- helpers -------------------------------------------------------------------------------------


def read_local(path: str, max_bytes: int | None = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a local file by the command line's rules (:mod:`zeroshot.image.reading`, which
    this client may not import): a regular file, opened without blocking and checked on the
    descriptor read; within ``max_bytes`` (None or 0: no cap) on its declared size and while read.
    :class:`~zeroshot.base.errors.ImageError` with the command line's message otherwise."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise os_error(e) from None
    try:
        st = os.fstat(fd)
        mode, size = st.st_mode, st.st_size
        if stat.S_ISDIR(mode):
            raise ImageError("is a directory")
        if not stat.S_ISREG(mode):
            raise ImageError(_kind(mode))
        if max_bytes and size > max_bytes:
            raise ImageError(f"too large: {size:,} bytes, over the {named('max_bytes')} limit of {max_bytes:,}")
        blocks, total = [], 0
        while block := _read(fd):
            total += len(block)
            if max_bytes and total > max_bytes:
                raise ImageError(f"too large: more than the {named('max_bytes')} limit of {max_bytes:,} bytes")
            blocks.append(block)
        return b"".join(blocks)
    finally:
        os.close(fd)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, _READ_BLOCK)
    except BlockingIOError:  # cannot happen on a regular file; never spin on one that does
        raise ImageError("not a regular file") from None
    except OSError as e:
        raise os_error(e) from None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return f"not a regular file: {name}"
    return "not a regular file"


def _is_pil(image: Any) -> bool:
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(image, module.Image)


def _is_memory(image: Any) -> bool:
    """A PIL image or a numpy array (neither imported here unless the caller already has)."""
    numpy = sys.modules.get("numpy")
    return _is_pil(image) or (numpy is not None and isinstance(image, numpy.ndarray))


def encode_image(image: Any) -> bytes:
    """A PIL image or a numpy array (uint8 HxW grey, HxWx3 RGB, HxWx4 RGBA) as the bytes of a file
    that decodes to the same pixels: PNG, or uncompressed TIFF for the modes PNG cannot hold (see
    :meth:`Client.classify`). No EXIF is written, so no orientation is applied: the pixels are the
    caller's, as the library takes them. An array of another shape or type is
    :class:`~zeroshot.base.errors.ImageError` with the library's message (its error record)."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(image, numpy.ndarray):
        from PIL import Image

        shape = tuple(image.shape)
        channels = 1 if len(shape) == 2 else (shape[2] if len(shape) == 3 else 0)
        if image.dtype != numpy.uint8 or channels not in (1, 3, 4):
            raise ImageError(
                f"unsupported array: {image.dtype} of shape {shape} (give uint8 HxW grey, HxWx3 RGB or HxWx4 RGBA)"
            )
        if not shape[0] or not shape[1]:
            raise ImageError(f"empty image ({shape[1]}x{shape[0]} pixels)")
        image = Image.fromarray(numpy.ascontiguousarray(image)).convert({1: "L", 3: "RGB", 4: "RGBA"}[channels])
    if not _is_pil(image):
        raise TypeError(f"an image to encode must be a PIL image or a numpy array, not {type(image).__name__}")
    out = io.BytesIO()
    if image.mode in _PNG_MODES:
        image.save(out, format="PNG")
    elif image.mode in _TIFF_MODES:
        image.save(out, format="TIFF")
    else:
        has_alpha = "A" in image.mode or "a" in image.mode
        image.convert("RGBA" if has_alpha else "RGB").save(out, format="PNG")
    return out.getvalue()


def _text_fields(
    labels: Sequence[str] | None,
    dataset: str | None,
    templates: Sequence[str] | None,
    classifier: str | None,
    top_k: int,
    multi_label: bool,
    threshold: float | None,
    background: str | None,
    min_score: float | None,
) -> list[tuple[str, str]]:
    """The request's text fields (what it is checked against is the server's: one place)."""
    fields: list[tuple[str, str]] = []
    for name, values in (("labels", labels), ("templates", templates)):
        if isinstance(values, str):
            raise UsageError(f"{name} must be a list of strings, not one string")
        fields += [(name, str(v)) for v in values or ()]
    for name, value in (("dataset", dataset), ("classifier", classifier), ("background", background)):
        if value is not None:
            fields.append((name, value))
    fields.append(("top_k", str(top_k)))
    if multi_label:
        fields.append(("multi_label", "true"))
    for name, number in (("threshold", threshold), ("min_score", min_score)):
        if number is not None:
            fields.append((name, repr(float(number))))
    return fields


def _disposition_name(name: str) -> str:
    """A file name as a quoted-string of a multipart header: backslash and quote escaped, line
    breaks (which no header may hold) replaced; the record's path is set from the name given anyway."""
    safe = name.replace("\r", "_").replace("\n", "_").replace("\\", "\\\\").replace('"', '\\"')
    return safe.encode("utf-8", "replace").decode("utf-8")


def _multipart(uploads: Sequence[_Upload], fields: Sequence[tuple[str, str]]) -> tuple[bytes, str]:
    """multipart/form-data: the text fields, then each image as a file in field ``image``; a random
    boundary that occurs in none of the data."""
    while True:
        boundary = "zeroshot-" + secrets.token_hex(16)
        marker = boundary.encode()
        if not any(marker in u.data for u in uploads) and not any(boundary in v for _, v in fields):
            break
    out = bytearray()
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode("utf-8", "surrogateescape") + b"\r\n"
    for upload in uploads:
        out += f"--{boundary}\r\n".encode()
        header = f'Content-Disposition: form-data; name="image"; filename="{_disposition_name(upload.name)}"\r\n'
        out += header.encode("utf-8", "replace") + b"Content-Type: application/octet-stream\r\n\r\n"
        out += upload.data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _merged(parts: Sequence[Any], answers: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The parts' records in order: a local one as it is, a sent image's from ``answers`` (which
    come in the order sent), its ``path`` set to the name given (whatever the server made of a name
    a header cannot carry exactly). Each record is yielded as soon as those before it are known."""
    waiting: deque[Any] = deque(parts)
    while waiting:
        part = waiting.popleft()
        if isinstance(part, _Upload):
            record = next(answers, None)
            if record is None:
                raise ServerError(200, "the server answered fewer records than images sent")
            if "path" in record:
                record["path"] = part.name
            else:
                record = {"path": part.name, **record}
            yield record
        else:
            yield part


def _listed(answer: Any, key: str, expected: int | None = None) -> list[Any]:
    items = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(items, list) or (expected is not None and len(items) != expected):
        wanted = f" of {expected}" if expected is not None else ""
        raise ServerError(200, f"the server's answer has no {key!r} list{wanted}")
    return items


def _json(data: bytes, url: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise ServerError(200, f"{url} answered something that is not JSON: is it a zeroshot server?") from None


def _status_of(record: Any) -> int:
    status = record.get("status") if isinstance(record, dict) else None
    return status if isinstance(status, int) else 500


def _error_line(data: bytes) -> str:
    """The server's one line from an error answer: ``{"error": ...}`` (``{"detail": ...}`` from a
    framework's own answers), else the first line of the text."""
    try:
        answer = json.loads(data)
    except ValueError:
        lines = data.decode("utf-8", "replace").strip().splitlines()
        return lines[0][:300] if lines else ""
    if isinstance(answer, dict):
        for key in ("error", "detail"):
            value: Any = answer.get(key)
            if isinstance(value, list) and value and isinstance(value[0], Mapping):
                value = value[0].get("msg")
            if isinstance(value, str) and value.strip():
                return value
    return ""
