"""
A scripted upstream registry for the faults a real registry will not
produce: bodies that do not match their digest, connections cut mid-body,
bodies held back until a test says go.

Each path is answered by a function of the request handler, so a test
writes exactly the bytes (or the silence) it needs.
"""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeUpstream:
    """
    An HTTP server on a free loopback port; C{routes} maps a path (without
    query) to a function C{(handler) -> None} that writes the response.
    Unknown paths get a registry-style 404. C{requests} records
    C{(method, path)} of everything asked.
    """

    def __init__(self, routes=None, host="127.0.0.1", fallback=None):
        self.routes = dict(routes or {})
        self.fallback = fallback  # answers what no route does, e.g. relay(real_registry_url)
        self.requests = []
        self.headers = []  # the request headers, in the order of requests
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake._answer(self)

            do_HEAD = do_GET

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _answer(self, handler):
        path = handler.path.split("?")[0]
        self.requests.append((handler.command, path))
        self.headers.append(handler.headers)
        if path == "/v2/" and self.fallback is None:
            return send(handler, 200, b"{}", "application/json")
        route = self.routes.get(path, self.fallback)
        if route is None:
            body = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}'
            return send(handler, 404, body, "application/json")
        route(handler)

    def count(self, method, path):
        return self.requests.count((method, path))

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def send(handler, status, body, content_type="application/octet-stream", headers=None):
    """
    A whole response; the body is left out for a HEAD.
    """
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def blob(data, *, claimed_length=None, cut_after=None, hold_after=None, release=None):
    """
    A route that serves C{data} as a blob, with faults on request:
    C{claimed_length} sends another Content-Length; C{cut_after} closes the
    connection after that many body bytes; C{hold_after} stops after that
    many bytes until the C{release} event is set.
    """

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data) if claimed_length is None else claimed_length))
        handler.end_headers()
        if handler.command == "HEAD":
            return
        if claimed_length is not None:
            handler.close_connection = True
        if cut_after is not None:
            handler.wfile.write(data[:cut_after])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if hold_after is not None:
            handler.wfile.write(data[:hold_after])
            handler.wfile.flush()
            if not release.wait(60):
                raise RuntimeError("the test never released the held blob")
            handler.wfile.write(data[hold_after:])
        else:
            handler.wfile.write(data)

    return route


def relay(origin):
    """
    A route that passes the request on to a real registry at C{origin} and
    its answer back, so a test can switch a real upstream into a fault.
    """
    import http.client
    from urllib.parse import urlsplit

    netloc = urlsplit(origin).netloc

    def route(handler):
        connection = http.client.HTTPConnection(netloc, timeout=60)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
        connection.request(handler.command, handler.path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        handler.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length", "date", "server"):
                handler.send_header(name, value)
        length = response.getheader("Content-Length") if handler.command == "HEAD" else str(len(body))
        handler.send_header("Content-Length", length or "0")
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
        connection.close()

    return route


def throttled(data, rate, done):
    """
    A route that sends C{data} at about C{rate} bytes/s and sets C{done}
    when it has sent the last byte.
    """

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        chunk = 256 * 1024
        started = time.monotonic()
        for i in range(0, len(data), chunk):
            handler.wfile.write(data[i:i + chunk])
            ahead = (i + chunk) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        handler.wfile.flush()
        done.set()

    return route
