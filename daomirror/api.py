"""
The registry API, read side, as a Klein app.

Each route parses and validates the request (DESIGN.md invariant 5: nothing
unvalidated goes further), asks the L{Mirror}, and shapes the answer. Every
error, ours or upstream's, leaves through L{RegistryAPI.registry_error} as an
OCI error body.
"""


import re
from urllib.parse import unquote_to_bytes, urlencode, urlsplit

from klein import Klein
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.web.resource import IResource
from zope.interface import implementer
from werkzeug.exceptions import HTTPException

from . import errors
from .fill import FillFailed
from .ranges import Unsatisfiable, requested_range
from .reference import InvalidReference, parse_digest, parse_name, parse_reference, parse_tag
from .streaming import StreamBroken

API_VERSION = b"registry/2.0"
JSON = b"application/json"
_READ_METHODS = ["GET", "HEAD"]
_WRITE_METHODS = ["POST", "PUT", "PATCH", "DELETE"]

log = Logger()


class RegistryAPI:
    app = Klein()

    def __init__(self, mirror):
        self._mirror = mirror

    def resource(self):
        return _Front(self.app.resource())

    @app.route("/v2/", methods=_READ_METHODS)
    def version_check(self, request):
        _start(request, JSON)
        return _sized(request, b"{}")

    @app.route("/healthz", methods=_READ_METHODS)
    def healthz(self, request):
        """
        Liveness: the reactor answers.
        """
        _start(request, JSON)
        return _sized(request, b'{"status": "ok"}')

    @app.route("/readyz", methods=_READ_METHODS)
    def readyz(self, request):
        """
        Readiness: storage answers (the upstream is not asked: cached
        content is served without it).
        """
        try:
            self._mirror.check_storage()
        except OSError as e:
            raise errors.RegistryError(503, "UNAVAILABLE", "storage is not usable", str(e)) from None
        _start(request, JSON)
        return _sized(request, b'{"status": "ready"}')

    @app.route("/v2/", methods=_WRITE_METHODS)
    def version_check_write(self, request):
        raise errors.unsupported("this registry is a read-only mirror")

    @app.route("/v2/<path:rest>", methods=_READ_METHODS)
    async def read(self, request, rest):
        kind, name, last = _route(request)
        if kind == "manifests":
            return await self._manifest(request, name, last)
        if kind == "blobs":
            return await self._blob(request, name, last)
        return await self._tags(request, name)

    @app.route("/v2/<path:rest>", methods=_WRITE_METHODS)
    def write(self, request, rest):
        raise errors.unsupported("this registry is a read-only mirror")

    @app.route("/", branch=True, methods=_READ_METHODS + _WRITE_METHODS)
    def elsewhere(self, request):
        raise errors.not_found(request.path.decode("latin-1")[:200])

    async def _manifest(self, request, name, reference):
        manifest = await self._mirror.manifest(name, reference, _accept(request))
        _start(request, manifest.media_type.encode("latin-1"))
        _describe(request, manifest.digest, manifest.size)
        return b"" if request.method == b"HEAD" else manifest.body

    async def _blob(self, request, name, digest):
        if request.method == b"HEAD":
            size = await self._mirror.blob_size(name, digest)
            _blob_headers(request, digest, size)
            return b""
        blob = await self._mirror.blob(name, digest)
        try:
            start, end = _blob_headers(request, digest, blob.size)
        except errors.RegistryError:
            blob.drop()  # a range beyond it: nothing of it is sent
            raise
        try:
            await blob.stream(request, start, end)
        except ConnectionLost:
            pass  # the client left; nothing to answer
        except (StreamBroken, FillFailed) as e:
            log.warn("aborting a response for {digest}: {why}", digest=str(digest), why=str(e))
            request.transport.abortConnection()
        return b""

    async def _tags(self, request, name):
        body, content_type, link = await self._mirror.tags(name, _pagination(request))
        _start(request, content_type.encode("latin-1"))
        link = _through_the_mirror(link)
        if link:
            request.setHeader(b"Link", link.encode("latin-1"))
        return _sized(request, body)

    @app.handle_errors(errors.RegistryError)
    def registry_error(self, request, failure):
        return _error(request, failure.value)

    @app.handle_errors(HTTPException)
    def routing_error(self, request, failure):
        if failure.value.code == 405:
            return _error(request, errors.unsupported("method not allowed here"))
        return _error(request, errors.not_found(request.path.decode("latin-1")[:200]))

    @app.handle_errors(Exception)
    def unexpected_error(self, request, failure):
        log.failure("unexpected error answering {uri}", failure, uri=request.uri)
        return _error(request, errors.RegistryError(503, "UNAVAILABLE", "internal error in the mirror"))


@implementer(IResource)
class _Front:
    """
    What Klein would answer itself, answered the registry's way: a path or
    Host that is not valid UTF-8 (Klein's own 400 page, and a traceback in
    the log), and methods in lower case (which the router would match, but
    Twisted would not treat as HEAD).
    """

    isLeaf = True

    def __init__(self, klein_resource):
        self._klein = klein_resource

    def getChildWithDefault(self, name, request):
        return self

    def putChild(self, path, child):
        raise NotImplementedError()

    def render(self, request):
        request.method = request.method.upper()
        try:
            unquote_to_bytes(request.path).decode("utf-8")
            (request.getHeader(b"host") or b"").decode("ascii")
        except UnicodeDecodeError:
            return _error(request, errors.name_invalid("the path or Host header is not valid text"))
        return self._klein.render(request)


def _route(request):
    """
    Split C{/v2/<name>/<kind>/<last>} and validate each part; the raw path is
    used so that an encoded slash or dot can never become a path component.
    """
    try:
        path = request.path.decode("ascii")
    except UnicodeDecodeError:
        raise errors.name_invalid("the path is not ASCII") from None
    if not path.startswith("/v2/"):  # the router saw it decoded: "/%762/x" is not "/v2/x"
        raise errors.not_found(path[:200])
    parts = path[len("/v2/"):].split("/")
    if parts[-2:] == ["blobs", "uploads"] or (len(parts) >= 3 and parts[-3:-1] == ["blobs", "uploads"]):
        raise errors.unsupported("this registry is a read-only mirror")
    if len(parts) >= 3 and parts[-2:] == ["tags", "list"]:
        kind, name, last = "tags", parts[:-2], None
    elif len(parts) >= 3 and parts[-2] in ("manifests", "blobs"):
        kind, name, last = parts[-2], parts[:-2], parts[-1]
    else:
        raise errors.not_found(path[:200])
    try:
        name = parse_name("/".join(name))
    except InvalidReference as e:
        raise errors.name_invalid(e.why) from None
    try:
        if kind == "manifests":
            last = parse_reference(last)
        elif kind == "blobs":
            last = parse_digest(last)
    except InvalidReference as e:
        raise (errors.tag_invalid(e.why) if e.kind == "tag" else errors.digest_invalid(e.why)) from None
    return kind, name, last


def _accept(request):
    """
    The media types the client accepts, without parameters; None when it
    sent no Accept header (then it takes anything).
    """
    values = request.requestHeaders.getRawHeaders(b"accept")
    if values is None:
        return None
    types = []
    for value in values:
        for item in value.decode("latin-1").split(","):
            media_type, *parameters = item.split(";")
            media_type = media_type.strip().lower()
            refused = any(p.replace(" ", "").lower() in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in parameters)
            if media_type and not refused:
                types.append(media_type)
    return tuple(types)


def _pagination(request):
    """
    The validated pagination parameters of a tags/list request, as a query
    string for upstream; containerd's C{ns} and anything else stay here.
    """
    kept = {}
    n = request.args.get(b"n")
    if n:
        if not n[0].isdigit() or len(n[0]) > 6:
            raise errors.RegistryError(400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested")
        kept["n"] = int(n[0])
    last = request.args.get(b"last")
    if last:
        try:
            kept["last"] = parse_tag(last[0].decode("ascii"))
        except (UnicodeDecodeError, InvalidReference):
            raise errors.tag_invalid("the last parameter is not a tag") from None
    return urlencode(kept)


def _through_the_mirror(link):
    """
    The upstream's pagination C{Link} pointed back at this mirror: the next
    page's path and query stay, the upstream's origin goes. A link that is
    not to a tag list is dropped.
    """
    if not link:
        return None
    match = re.fullmatch(r'\s*<([^>]*)>(.*)', link)
    if match is None:
        return None
    target = urlsplit(match.group(1))
    if not re.fullmatch(r"/v2/[a-z0-9._/-]+/tags/list", target.path):
        return None
    return f"<{target.path}{'?' + target.query if target.query else ''}>{match.group(2)}"


def _start(request, content_type):
    request.setHeader(b"Docker-Distribution-API-Version", API_VERSION)
    request.setHeader(b"Content-Type", content_type)


def _blob_headers(request, digest, size):
    """
    Headers for a blob or a range of it; returns the range (start, end) to send.
    """
    _start(request, b"application/octet-stream")
    _describe(request, digest, size)
    request.setHeader(b"Accept-Ranges", b"bytes")
    etag = f'"{digest}"'
    header, if_range = request.getHeader(b"range"), request.getHeader(b"if-range")
    try:
        wanted = requested_range(_text(header), _text(if_range), etag, size)
    except Unsatisfiable:
        raise errors.RegistryError(416, "RANGE_INVALID", "requested range not satisfiable", {"size": size},
                                   {"Content-Range": f"bytes */{size}"}) from None
    if wanted is None:
        return 0, size
    start, end = wanted
    request.setResponseCode(206)
    request.setHeader(b"Content-Range", f"bytes {start}-{end - 1}/{size}".encode("ascii"))
    request.setHeader(b"Content-Length", str(end - start).encode("ascii"))
    return start, end


def _text(header):
    return None if header is None else header.decode("latin-1")


def _describe(request, digest, size):
    digest = str(digest).encode("ascii")
    request.setHeader(b"Docker-Content-Digest", digest)
    request.setHeader(b"ETag", b'"' + digest + b'"')
    request.setHeader(b"Content-Length", str(size).encode("ascii"))


def _sized(request, body):
    """
    A whole small body with its Content-Length (not chunked); none for a HEAD.
    """
    request.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
    return b"" if request.method == b"HEAD" else body


def _error(request, error):
    if request.startedWriting:
        # A response is under way: an error body now would end it cleanly
        # on a short or wrong body (DESIGN.md invariant 8). Abort instead.
        log.warn("aborting a response under way: {why}", why=error.detail or error.message)
        request.transport.abortConnection()
        return b""
    request.setResponseCode(error.status)
    _start(request, JSON)
    for name, value in error.headers.items():
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
    return _sized(request, error.body())


__all__ = ["RegistryAPI"]
