"""A tiny outbound HTTP proxy on loopback, to prove the mirror uses one.

Why: a mirror deployed behind a corporate proxy must send its upstream
traffic through it: ``CONNECT host:port`` for https upstreams and
absolute-URI requests (``GET http://host:port/path``) for plain http.
This proxy does both and records every request, so a test can assert the
upstream was reached through it (and how):

    with ForwardProxy() as proxy:
        ...  # point the mirror at proxy.url
        assert ("GET", f"http://{reg.host}/v2/") in proxy.targets()

Bytes are relayed as they come (streaming, both ways).  A forwarded
request is sent to the origin with ``Connection: close`` and the client
connection is closed after the response, which keeps the relay a plain
byte pipe.  Threaded standard library; no Twisted.
"""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["ForwardProxy", "ProxyRequest"]

# Hop-by-hop request headers not passed on to the origin.
_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te",
                "trailer", "upgrade"}


@dataclass
class ProxyRequest:
    """One request the proxy received; the byte counts grow while it is relayed."""

    method: str
    target: str  # "host:port" for CONNECT, else the absolute URI
    headers: dict[str, str] = field(default_factory=dict)  # as the client sent them
    status: int | None = None  # the proxy's own answer (200/502/...), None if relayed
    bytes_up: int = 0  # client -> origin, after the request head
    bytes_down: int = 0  # origin -> client

    @property
    def host(self) -> str:
        """``host:port`` of the origin."""
        if self.method == "CONNECT":
            return self.target
        u = urlsplit(self.target)
        return f"{u.hostname}:{u.port or 80}"


def _pipe(client: socket.socket, origin: socket.socket, rec: ProxyRequest) -> None:
    """Copy bytes both ways until either side closes (half-closes are passed on)."""
    open_ = {client: origin, origin: client}
    while open_:
        readable, _, _ = select.select(list(open_), [], [], 60)
        if not readable:
            return  # idle for a minute: give up
        for src in readable:
            dst = open_[src]
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                open_.pop(src)
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                if src is origin:  # the origin is done: so is the exchange
                    return
                continue
            try:
                dst.sendall(data)
            except OSError:
                return
            if src is client:
                rec.bytes_up += len(data)
            else:
                rec.bytes_down += len(data)


class _Handler(socketserver.StreamRequestHandler):
    # Unbuffered: the head is read byte by byte, so no body bytes are left
    # in a buffer when the socket is handed to _pipe.
    rbufsize = 0

    def handle(self) -> None:
        proxy: ForwardProxy = self.server.proxy  # type: ignore[attr-defined]
        line = self.rfile.readline(65537).decode("latin-1")
        parts = line.split()
        if len(parts) != 3:
            return
        method, target, version = parts
        headers: list[tuple[str, str]] = []
        while True:
            h = self.rfile.readline(65537).decode("latin-1")
            if h in ("\r\n", "\n", ""):
                break
            name, _, value = h.partition(":")
            headers.append((name.strip(), value.strip()))
        rec = ProxyRequest(method, target, {k: v for k, v in headers})
        proxy._record(rec)

        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit():
                return self._answer(rec, 400, "CONNECT needs host:port")
            head = b""
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                return self._answer(rec, 400, "absolute http:// URI required")
            host, port = url.hostname, url.port or 80
            path = (url.path or "/") + ("?" + url.query if url.query else "")
            lines = [f"{method} {path} {version}"]
            lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_HEADERS]
            lines += ["Connection: close", "", ""]
            head = "\r\n".join(lines).encode("latin-1")
        try:
            origin = socket.create_connection((host.strip("[]"), int(port)), timeout=30)
        except (OSError, ValueError) as e:
            return self._answer(rec, 502, f"cannot reach {host}:{port}: {e}")
        with origin:
            origin.settimeout(None)
            if method == "CONNECT":
                rec.status = 200
                self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                origin.sendall(head)
            _pipe(self.connection, origin, rec)

    def _answer(self, rec: ProxyRequest, status: int, message: str) -> None:
        rec.status = status
        body = (message + "\n").encode()
        self.wfile.write(
            f"HTTP/1.1 {status} {'Bad Gateway' if status == 502 else 'Bad Request'}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode() + body
        )


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class ForwardProxy:
    """An HTTP proxy on a free loopback port (``url`` is ``http://127.0.0.1:PORT``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[ProxyRequest] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"proxy-{self.port}", daemon=True)
        self._thread.start()

    def _record(self, rec: ProxyRequest) -> None:
        with self._lock:
            self._requests.append(rec)

    @property
    def requests(self) -> list[ProxyRequest]:
        """Every request so far (a copy of the list), oldest first."""
        with self._lock:
            return list(self._requests)

    def targets(self) -> list[tuple[str, str]]:
        """``[(method, target), ...]``, e.g. ``("CONNECT", "127.0.0.1:5000")``."""
        return [(r.method, r.target) for r in self.requests]

    def count(self, method: str | None = None, contains: str = "") -> int:
        return sum(1 for r in self.requests
                   if (method is None or r.method == method) and contains in r.target)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop accepting (idempotent); tunnels already open end when a side closes."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> "ForwardProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ForwardProxy {self.url}>"
