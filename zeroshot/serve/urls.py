"""Fetching an image named by URL, for a server that allows URL inputs (``--allow-urls``).

Invariants (the guard against server-side request forgery):

- Only ``http`` and ``https``. The host is resolved once with ``socket.getaddrinfo``; unless
  ``allow_private``, the fetch is refused when ANY resolved address is not a public one (loopback,
  private, link-local, unspecified, reserved, multicast, shared 100.64/10, the cloud metadata
  addresses), IPv4 addresses embedded in IPv6 (mapped, 6to4, NAT64, Teredo) judged as themselves.
- The connection goes to an address that was checked: no second lookup, so a name that resolves
  to a public address for the check and to 127.0.0.1 for the connection (DNS rebinding) cannot
  slip through. The Host header and, for https, SNI and the certificate check use the name.
- Redirects are followed by hand, at most ``MAX_REDIRECTS``, each target checked the same way.
- At most ``max_bytes`` of body are read (a larger declared Content-Length is refused first); the
  whole fetch, redirects included, ends within ``timeout`` seconds: a watchdog closes the socket
  at the deadline, whatever the server drips.
- Every failure is ``UrlRefused`` with one line; nothing here reads a local file.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Any

MAX_REDIRECTS = 5
CHUNK = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)
ALLOW_HINT = "(start the server with --allow-private-urls to allow it)"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))
SHARED = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UrlRefused(Exception):
    """A URL input the server will not fetch, or could not: the message is one line."""

    def __init__(self, message: str) -> None:
        self.message = " ".join(str(message).split())
        super().__init__(self.message)


def _embedded_ipv4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64, Teredo), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def refusal_reason(ip: Address) -> str | None:
    """Why ``ip`` is not a public address ("a loopback address", ...), or None when it is one."""
    inner = _embedded_ipv4(ip)
    if inner is not None:
        return refusal_reason(inner)
    if ip in METADATA:
        return "the cloud metadata address"
    checks = (
        (ip.is_loopback, "a loopback address"),
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_link_local, "a link-local address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in SHARED, "a shared (carrier-grade NAT) address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        # Whatever the lists above miss (documentation ranges, benchmarking, new IANA blocks).
        (not ip.is_global, "not a public address"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


def _resolve(host: str, port: int, timeout: float) -> list[tuple[Any, ...]]:
    """getaddrinfo's stream addresses for ``host``, bounded by ``timeout`` (the lookup itself has
    no timeout of its own, so it runs on a daemon thread that is abandoned if it overruns)."""
    out: dict[str, Any] = {}

    def lookup() -> None:
        try:
            out["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:
            out["error"] = e

    worker = threading.Thread(target=lookup, daemon=True, name="zeroshot-resolve")
    worker.start()
    worker.join(max(timeout, 0.0))
    if worker.is_alive():
        raise UrlRefused(f"could not fetch URL: looking up {host} timed out")
    if "error" in out:
        raise UrlRefused(f"could not fetch URL: cannot resolve {host}: {out['error']}")
    infos = [i for i in out["infos"] if i[0] in (socket.AF_INET, socket.AF_INET6)]
    if not infos:
        raise UrlRefused(f"could not fetch URL: {host} has no address")
    return infos


def _checked_addresses(host: str, port: int, allow_private: bool, timeout: float) -> list[tuple[Any, ...]]:
    """The addresses to connect to, each one checked; refused if any one of them is not public."""
    infos = _resolve(host, port, timeout)
    if not allow_private:
        for info in infos:
            text = str(info[4][0])
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                raise UrlRefused(f"refused: {host} resolves to {text}, not an IP address") from None
            reason = refusal_reason(ip)
            if reason is not None:
                said = f"{text} is {reason}" if _same_host(host, text) else f"{host} resolves to {text}, {reason}"
                raise UrlRefused(f"refused: {said} {ALLOW_HINT}")
    return infos


def _same_host(host: str, text: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")) == ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False


def connect(family: int, address: tuple[Any, ...], timeout: float) -> socket.socket:
    """A TCP connection to one checked address (a module-level function so tests can reroute it)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


class _Pinned(http.client.HTTPConnection):
    """An HTTP(S) connection to an already connected socket: no lookup of its own, Host and SNI
    from the URL's name."""

    def __init__(self, host: str, port: int, sock: socket.socket, tls: bool, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        if tls:
            context = ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=host.strip("[]"))
        self.sock = sock

    def connect(self) -> None:  # the socket is given; never dial again
        if self.sock is None:
            raise OSError("connection already closed")


def _dial(url: str, allow_private: bool, deadline: float) -> tuple[socket.socket, str, urllib.parse.SplitResult, int]:
    """Check ``url`` and connect to a checked address of its host: (socket, host, the URL's parts, port)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused(f"refused: only http and https URLs are fetched, not {scheme or 'a relative URL'}:")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("refused: URLs with a user name or password are not fetched")
    host = parts.hostname
    if not host:
        raise UrlRefused("refused: the URL has no host")
    try:  # the name as DNS and the Host header spell it (IDNA for a non-ASCII name)
        host.encode("ascii")
    except UnicodeEncodeError:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UrlRefused("refused: the URL's host name is not a valid name") from None
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise UrlRefused("refused: the URL's port is not a number from 0 to 65535") from None
    infos = _checked_addresses(host, port, allow_private, _left(deadline))
    error: Exception | None = None
    for family, _type, _proto, _name, address in infos:
        try:
            return connect(family, address, _left(deadline)), host, parts, port
        except OSError as e:
            error = e
    raise UrlRefused(f"could not fetch URL: cannot connect to {host}: {_why(error)}")


def _get(conn: _Pinned, parts: urllib.parse.SplitResult) -> http.client.HTTPResponse:
    """Send GET over the pinned connection; the response with its head read."""
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.putheader("Accept", "image/*, */*;q=0.5")
    conn.putheader("User-Agent", "zeroshot-serve")
    conn.endheaders()
    return conn.getresponse()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _why(error: BaseException | None) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate check failed ({error.verify_message})"
    if isinstance(error, TimeoutError | socket.timeout):
        return "timed out"
    text = " ".join(str(error).split()) if error is not None else ""
    return text or type(error).__name__


def _read_body(response: http.client.HTTPResponse, max_bytes: int) -> bytes:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise UrlRefused(f"refused: the URL's body is {int(declared)} bytes, over the cap of {max_bytes}")
    body = bytearray()
    while True:
        chunk = response.read(min(CHUNK, max_bytes + 1 - len(body)))
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > max_bytes:
            raise UrlRefused(f"refused: the URL's body is over the cap of {max_bytes} bytes")


def fetch(url: str, *, allow_private: bool, max_bytes: int, timeout: float) -> bytes:
    """The body of ``url`` (following at most ``MAX_REDIRECTS`` redirects), or ``UrlRefused``.

    Blocking: the server runs it on a thread. See the module's docstring for what is checked.
    """
    deadline = time.monotonic() + timeout
    current = url
    for hop in range(MAX_REDIRECTS + 1):
        sock: socket.socket | None = None
        guard: socket.socket | None = None
        conn: _Pinned | None = None
        watchdog: threading.Timer | None = None
        try:
            sock, host, parts, port = _dial(current, allow_private, deadline)
            # Socket timeouts bound each read, not their sum: at the deadline the watchdog shuts
            # the connection (through a duplicate of its descriptor, which TLS wrapping leaves
            # alone), so a server that drips one byte at a time still ends here in time.
            guard = sock.dup()
            watchdog = threading.Timer(_left(deadline), _shut, (guard,))
            watchdog.daemon = True
            watchdog.start()
            conn = _Pinned(host, port, sock, parts.scheme.lower() == "https", _left(deadline))
            response = _get(conn, parts)
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise UrlRefused(f"could not fetch URL: HTTP {response.status} without a Location")
                if hop == MAX_REDIRECTS:
                    raise UrlRefused(f"refused: more than {MAX_REDIRECTS} redirects")
                current = urllib.parse.urljoin(current, location.strip())
                continue
            if response.status != 200:
                raise UrlRefused(f"could not fetch URL: HTTP {response.status} {response.reason}".rstrip())
            body = _read_body(response, max_bytes)
            # A body without a declared length ends at EOF, which is also what the watchdog makes.
            _left(deadline)
            return body
        except UrlRefused:
            raise
        except (OSError, http.client.HTTPException, ValueError) as e:
            if time.monotonic() >= deadline or isinstance(e, TimeoutError | socket.timeout):
                raise UrlRefused(f"could not fetch URL: timed out after {timeout:g} s") from None
            raise UrlRefused(f"could not fetch URL: {_why(e)}") from None
        finally:
            if watchdog is not None:
                watchdog.cancel()
            for each in (conn, sock, guard):
                if each is not None:
                    each.close()
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed: the fetch ended first
        sock.shutdown(socket.SHUT_RDWR)
