"""``zeroshot.serve.urls.fetch``: the guard against server-side request forgery, against local HTTP
servers on 127.0.0.1 (a public address cannot be reached offline, so the address check is tested
with a patched ``getaddrinfo`` giving a public address for a made-up name, and the connection to
that checked address rerouted to the local server by a patched connection factory)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from zeroshot.serve import urls
from zeroshot.serve.urls import UrlRefused, fetch

PUBLIC = "93.184.216.34"
HINT = "(start the server with --allow-private-urls to allow it)"
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # the bytes a fetch must give back whole


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that stops reading (the point of several tests) is no error here


class Local:
    """A threaded HTTP server on 127.0.0.1 answering the paths below; ``hosts`` records each
    request's Host header; ``stop_stalling`` ends the stalling handlers early."""

    def __init__(self) -> None:
        local = self
        self.hosts: list[str] = []
        self.stop_stalling = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                local.hosts.append(self.headers.get("Host", ""))
                path, _, query = self.path.partition("?")
                if path == "/img":
                    self._send(200, IMAGE)
                elif path.startswith("/big/"):  # a declared length of N bytes
                    self._send(200, b"x" * int(path.split("/")[2]))
                elif path.startswith("/undeclared/"):  # N bytes, no length: the body ends at close
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b"x" * int(path.split("/")[2]))
                    self.close_connection = True
                elif path.startswith("/chain/"):  # N more redirects, then the image
                    left = int(path.split("/")[2])
                    if left == 0:
                        self._send(200, IMAGE)
                    else:
                        self._redirect(f"/chain/{left - 1}")
                elif path == "/redirect":
                    self._redirect(query)
                elif path == "/stall":  # accepts, then says nothing
                    local.stop_stalling.wait(10)
                    self.close_connection = True
                elif path == "/drip":  # a head, then one byte of body now and then, forever
                    self.send_response(200)
                    self.send_header("Content-Length", "1000000")
                    self.end_headers()
                    while not local.stop_stalling.wait(0.05):
                        try:
                            self.wfile.write(b"x")
                            self.wfile.flush()
                        except OSError:
                            break
                    self.close_connection = True
                else:
                    self._send(404, b"no")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _redirect(self, where: str) -> None:
                self.send_response(302)
                self.send_header("Location", where)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop_stalling.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def local() -> Iterator[Local]:
    server = Local()
    yield server
    server.close()


@pytest.fixture
def public_name(monkeypatch, local):
    """``images.example.test`` (and ``other.example.test``) resolve to a public address, and a
    connection to that address lands on the local server (or on ``ports[0]``, when a test sets
    it); returns the lookups made, the addresses connected to, and ``ports``.

    A second lookup of the name would give 127.0.0.1 (DNS rebinding): the fetch must connect to
    the address it checked, not look the name up again."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = urls.connect
    lookups: list[str] = []
    dialed: list[tuple] = []
    ports = [local.port]

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in ("images.example.test", "other.example.test"):
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        address = PUBLIC if len(lookups) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    def connect(family, address, timeout):
        dialed.append(address)
        if address[0] == PUBLIC:
            return real_connect(socket.AF_INET, ("127.0.0.1", ports[0]), timeout)
        return real_connect(family, address, timeout)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(urls, "connect", connect)
    return lookups, dialed, ports


def refused(url: str, **kw) -> str:
    kw = {"allow_private": False, "max_bytes": 10_000, "timeout": 5.0, **kw}
    with pytest.raises(UrlRefused) as info:
        fetch(url, **kw)
    message = info.value.message
    assert message and "\n" not in message
    return message


def test_loopback_url_is_refused_unless_private_urls_are_allowed(local):
    assert refused(local.url + "/img") == f"refused: 127.0.0.1 is a loopback address {HINT}"
    assert fetch(local.url + "/img", allow_private=True, max_bytes=10_000, timeout=5) == IMAGE


def test_localhost_by_name_is_refused(local):
    message = refused(f"http://localhost:{local.port}/img")
    assert message in (
        f"refused: localhost resolves to 127.0.0.1, a loopback address {HINT}",
        f"refused: localhost resolves to ::1, a loopback address {HINT}",
    )


def test_public_name_is_fetched_from_the_checked_address(local, public_name):
    lookups, dialed, _ = public_name
    hosts = len(local.hosts)
    url = f"http://images.example.test:{local.port}/img"
    assert fetch(url, allow_private=False, max_bytes=10_000, timeout=5) == IMAGE
    assert lookups == ["images.example.test"]  # one lookup: the connection went where the check said
    assert dialed == [(PUBLIC, local.port)]
    assert local.hosts[hosts:] == [f"images.example.test:{local.port}"]


def test_name_with_any_private_address_is_refused(monkeypatch):
    def getaddrinfo(host, port, *args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", port)),
        ]

    dialed = []
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(urls, "connect", lambda *a: dialed.append(a) or pytest.fail("connected"))
    assert refused("http://mixed.example.test/x.jpg") == (
        f"refused: mixed.example.test resolves to 10.1.2.3, a private address {HINT}"
    )
    assert dialed == []


@pytest.mark.parametrize(
    "target, message",
    [
        ("http://127.0.0.1:{port}/img", f"refused: 127.0.0.1 is a loopback address {HINT}"),
        ("http://169.254.169.254/latest/meta-data/", f"refused: 169.254.169.254 is the cloud metadata address {HINT}"),
        ("http://[::1]:{port}/img", f"refused: ::1 is a loopback address {HINT}"),
        ("file:///etc/passwd", "refused: only http and https URLs are fetched, not file:"),
    ],
)
def test_redirect_from_a_public_address_to_a_private_one_is_refused(local, public_name, target, message):
    _, dialed, _ = public_name
    target = target.format(port=local.port)
    hosts = len(local.hosts)
    assert refused(f"http://images.example.test:{local.port}/redirect?{target}") == message
    assert dialed == [(PUBLIC, local.port)]  # the redirect's target was never dialed
    assert len(local.hosts) == hosts + 1


def test_five_redirects_are_followed_and_six_refused(local):
    assert fetch(local.url + "/chain/5", allow_private=True, max_bytes=10_000, timeout=5) == IMAGE
    hosts = len(local.hosts)
    assert refused(local.url + "/chain/6", allow_private=True) == "refused: more than 5 redirects"
    assert len(local.hosts) == hosts + 6


def test_body_over_max_bytes_is_refused_declared_or_not(local):
    assert fetch(local.url + "/big/1000", allow_private=True, max_bytes=1000, timeout=5) == b"x" * 1000
    assert fetch(local.url + "/undeclared/1000", allow_private=True, max_bytes=1000, timeout=5) == b"x" * 1000
    assert refused(local.url + "/big/1001", allow_private=True, max_bytes=1000) == (
        "refused: the URL's body is 1001 bytes, over the cap of 1000"
    )
    assert refused(local.url + "/undeclared/5000000", allow_private=True, max_bytes=1000) == (
        "refused: the URL's body is over the cap of 1000 bytes"
    )


@pytest.mark.parametrize("path", ["/stall", "/drip"])
def test_a_stalling_server_is_given_up_on_within_the_timeout(local, path):
    start = time.monotonic()
    message = refused(local.url + path, allow_private=True, max_bytes=10_000_000, timeout=1.0)
    took = time.monotonic() - start
    assert message == "could not fetch URL: timed out after 1 s"
    assert 0.9 <= took < 2.5, took


def test_http_error_status_is_one_line(local):
    assert refused(local.url + "/missing", allow_private=True) == "could not fetch URL: HTTP 404 Not Found"


def test_nothing_listening_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the connection is refused
        message = refused(f"http://127.0.0.1:{port}/", allow_private=True)
    assert message.startswith("could not fetch URL: cannot connect to 127.0.0.1: "), message


@pytest.mark.parametrize(
    "url, message",
    [
        ("file:///etc/passwd", "refused: only http and https URLs are fetched, not file:"),
        ("ftp://example.com/a.jpg", "refused: only http and https URLs are fetched, not ftp:"),
        ("gopher://127.0.0.1:6379/_INFO", "refused: only http and https URLs are fetched, not gopher:"),
        ("data:image/png;base64,AAAA", "refused: only http and https URLs are fetched, not data:"),
        ("/etc/passwd", "refused: only http and https URLs are fetched, not a relative URL:"),
        ("http:///nohost", "refused: the URL has no host"),
        ("http://user:pw@example.com/a.jpg", "refused: URLs with a user name or password are not fetched"),
        ("http://example.com:99999/", "refused: the URL's port is not a number from 0 to 65535"),
    ],
)
def test_other_schemes_and_malformed_urls_are_refused(url, message):
    assert refused(url) == message
    assert refused(url, allow_private=True) == message


@pytest.mark.parametrize(
    "host, message",
    [
        ("[::1]", f"refused: ::1 is a loopback address {HINT}"),
        ("[::ffff:127.0.0.1]", f"refused: ::ffff:127.0.0.1 is a loopback address {HINT}"),
        ("[fd00:ec2::254]", f"refused: fd00:ec2::254 is the cloud metadata address {HINT}"),
        ("[::ffff:169.254.169.254]", f"refused: ::ffff:169.254.169.254 is the cloud metadata address {HINT}"),
        ("0.0.0.0", f"refused: 0.0.0.0 is an unspecified address {HINT}"),
        ("10.0.0.1", f"refused: 10.0.0.1 is a private address {HINT}"),
        ("2130706433", f"refused: 2130706433 resolves to 127.0.0.1, a loopback address {HINT}"),
        ("0x7f.1", f"refused: 0x7f.1 resolves to 127.0.0.1, a loopback address {HINT}"),
    ],
)
def test_address_literals_are_refused(host, message):
    # Each is refused before any connection: nothing listens on these in the test.
    assert refused(f"http://{host}/latest/meta-data/") == message


@pytest.mark.parametrize(
    "address, reason",
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.255.254", "a loopback address"),
        ("::1", "a loopback address"),
        ("0.0.0.0", "an unspecified address"),
        ("::", "an unspecified address"),
        ("169.254.169.254", "the cloud metadata address"),
        ("fd00:ec2::254", "the cloud metadata address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("100.64.0.1", "a shared (carrier-grade NAT) address"),
        ("100.100.100.200", "a shared (carrier-grade NAT) address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("fc00::1", "a private address"),
        ("240.0.0.1", "a private address"),
        ("192.0.2.1", "a private address"),
        ("::7f00:1", "a reserved address"),
        # IPv4 inside IPv6: judged as the IPv4 address it stands for.
        ("::ffff:127.0.0.1", "a loopback address"),
        ("::ffff:10.0.0.1", "a private address"),
        ("2002:7f00:1::", "a loopback address"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", "the cloud metadata address"),  # 6to4 of 169.254.169.254
        ("64:ff9b::7f00:1", "a loopback address"),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "the cloud metadata address"),  # NAT64 of 169.254.169.254
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "a loopback address"),  # Teredo, client 127.0.0.1
        ("8.8.8.8", None),
        (PUBLIC, None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_refusal_reason(address, reason):
    assert urls.refusal_reason(ipaddress.ip_address(address)) == reason


def test_non_ascii_host_is_looked_up_as_idna(monkeypatch):
    asked = []

    def getaddrinfo(host, port, *args, **kwargs):
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.168.0.10", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert refused("http://bücher.example/a.jpg") == (
        f"refused: xn--bcher-kva.example resolves to 192.168.0.10, a private address {HINT}"
    )
    assert asked == ["xn--bcher-kva.example"]


@pytest.fixture(scope="module")
def tls(tmp_path_factory, local) -> Iterator[tuple[int, str, list[str]]]:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate for images.example.test:
    (port, the certificate's file, the SNI names clients sent)."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", str(key),
         "-out", str(cert), "-subj", "/CN=images.example.test", "-addext", "subjectAltName=DNS:images.example.test"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def heard(sock, name, ctx) -> None:
        names.append(name)

    context.sni_callback = heard
    server = QuietServer(("127.0.0.1", 0), local.httpd.RequestHandlerClass)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], str(cert), names
    server.shutdown()
    server.server_close()


def test_https_checks_the_certificate_against_the_name(monkeypatch, public_name, tls):
    import ssl

    port, cert, names = tls
    lookups, dialed, ports = public_name
    ports[0] = port
    url = f"https://images.example.test:{port}/img"
    # Not trusted: a self-signed certificate is refused, whatever the address.
    assert refused(url) == ("could not fetch URL: certificate check failed (self-signed certificate)")
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: real(cafile=cert))
    lookups.clear()  # a new fetch: its first lookup gives the public address again
    assert fetch(url, allow_private=False, max_bytes=10_000, timeout=5) == IMAGE
    assert dialed[-1] == (PUBLIC, port)
    assert names[-1] == "images.example.test"  # SNI: the name, not the address dialed


def test_https_certificate_for_another_name_is_refused(monkeypatch, public_name, tls):
    import ssl

    port, cert, _ = tls
    _, _, ports = public_name
    ports[0] = port
    real = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *a, **k: real(cafile=cert))
    message = refused(f"https://other.example.test:{port}/img")
    assert message.startswith("could not fetch URL: certificate check failed (Hostname mismatch"), message
