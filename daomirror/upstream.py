"""
The upstream registry, spoken to with treq.

Each method asks for one thing and either returns the upstream's answer or
raises a L{RegistryError} saying what the client should see (DESIGN.md's
status table): this module knows nothing about caching. Authentication
challenges are answered by an L{Authenticator}; redirects (blob downloads
sent to a CDN) are followed by treq's redirect agent, which drops the
C{Authorization} header when the redirect leaves the upstream's origin.
"""

import json
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError, ConnectingCancelledError, TimeoutError
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss

from . import errors
from .auth import TOKEN_BODY_LIMIT, Authenticator
from .silence import Silence

MANIFEST_SIZE_LIMIT = 4 * 1024 * 1024
ERROR_BODY_LIMIT = 64 * 1024
MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
)
_NOT_FOUND_CODES = {"NAME_UNKNOWN", "MANIFEST_UNKNOWN", "BLOB_UNKNOWN"}
_REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class UpstreamManifest:
    """
    A manifest as the upstream sent it (C{body} is None for a HEAD).
    """

    body: bytes | None
    media_type: str
    digest: str | None


class Upstream:
    """
    One upstream registry at C{url}, reached through C{client} (a
    L{treq.client.HTTPClient} whose pool the caller owns).
    """

    def __init__(self, url, client, reactor, username=None, password=None,
                 headers_timeout=60.0, idle_timeout=60.0):
        self.url = url
        self._client = client
        self._reactor = reactor
        self._headers_timeout = headers_timeout
        self.idle_timeout = idle_timeout
        self._origin = _origin(url)
        self._auth = Authenticator(self._get_token, username, password,
                                   secure_realms_only=url.startswith("https:"))

    async def manifest(self, name, reference, accept, method="GET"):
        """
        Fetch (or C{HEAD}) a manifest with the client's C{Accept} values.
        """
        headers = {"Accept": [", ".join(accept)]} if accept else {}
        response = await self._request(method, name, f"manifests/{reference}", headers, "manifest")
        media_type = _header(response, "Content-Type") or ""
        digest = _header(response, "Docker-Content-Digest")
        if method == "HEAD":
            return UpstreamManifest(None, media_type, digest)
        body = await self._read(response, MANIFEST_SIZE_LIMIT, "manifest")
        return UpstreamManifest(body, media_type, digest)

    async def blob(self, name, digest):
        """
        Start a blob download; the caller delivers the body with
        C{response.deliverBody}.
        """
        return await self._request("GET", name, f"blobs/{digest}", {}, "blob")

    async def blob_size(self, name, digest):
        """
        Ask with a C{HEAD} whether the blob exists in C{name}; its size or None.
        """
        response = await self._request("HEAD", name, f"blobs/{digest}", {}, "blob")
        return _content_length(response)

    async def tags(self, name, query):
        """
        The tag list (body, content type and Link header), with the client's
        pagination query.
        """
        response = await self._request("GET", name, "tags/list" + (f"?{query}" if query else ""), {}, "name")
        body = await self._read(response, MANIFEST_SIZE_LIMIT, "tag list")
        return body, _header(response, "Content-Type") or "application/json", _header(response, "Link")

    async def _request(self, method, name, rest, headers, what):
        """
        One request for something in repository C{name}, authenticated as the
        upstream asks: at most one retry, with a fresh token, after a 401.
        """
        path = f"/v2/{name}/{rest}"
        scope = f"repository:{name}:pull"
        sent = self._auth.cached(scope)
        response, at_upstream = await self._send(method, path, headers, sent)
        if response.code == 401 and at_upstream:  # a CDN's challenge never gets our credentials
            challenges = _headers(response, "WWW-Authenticate")
            await self._discard(response)
            answer = await self._auth.answer(challenges, scope, rejected=sent)
            response, _ = await self._send(method, path, headers, answer)
            if response.code == 401:
                await self._discard(response)
                raise errors.unavailable(f"{method} {path}: upstream refused the mirror's credentials (401)")
        if response.code == 200:
            return response
        raise await self._error_for(response, method, path, what)

    async def _send(self, method, path, headers, authorization):
        """
        Send a request and follow its redirects (a blob download is usually
        sent to a CDN), each relative C{Location} resolved against the URL
        that sent it. C{authorization} goes to the upstream's own origin
        only, never across a redirect to another host.

        @return: the final response, and whether the upstream's own origin
            sent it.
        """
        url = self.url + path
        for _ in range(MAX_REDIRECTS):
            at_upstream = _origin(url) == self._origin
            sending = headers
            if authorization is not None and at_upstream:
                sending = dict(headers, Authorization=[authorization])
            response = await self._fetch(method, url, sending)
            location = _header(response, "Location")
            if response.code not in _REDIRECTS or not location:
                return response, at_upstream
            await self._discard(response)
            url = _resolve(url, location)
            if url is None:
                raise errors.unavailable(f"{method} {path}: upstream redirected to an unusable URL")
        raise errors.unavailable(f"{method} {path}: more than {MAX_REDIRECTS} redirects")

    async def _fetch(self, method, url, headers):
        """
        Send one request and wait for the response headers, turning every
        way of not getting them into the right error.
        """
        try:
            return await self._client.request(
                method, url, headers=headers, unbuffered=True, timeout=self._headers_timeout,
                allow_redirects=False,
            )
        except (CancelledError, TimeoutError, ConnectingCancelledError) as e:
            raise errors.upstream_timeout(f"{method} {_path_of(url)}: no answer from upstream in time") from e
        except (ConnectError, ResponseFailed, ResponseNeverReceived, OSError) as e:
            if _timed_out(e):  # treq's timeout cancels the request, which surfaces as a failure
                raise errors.upstream_timeout(f"{method} {_path_of(url)}: no answer from upstream in time") from e
            raise errors.unavailable(f"{method} {_path_of(url)}: cannot reach upstream: {_describe(e)}") from e

    async def _get_token(self, url, headers):
        """
        Fetch a token from the upstream's realm, for the L{Authenticator}.
        """
        response = await self._fetch("GET", url, headers)
        return response.code, await self._read(response, TOKEN_BODY_LIMIT, "token")

    async def _error_for(self, response, method, path, what):
        """
        Map a non-200 upstream answer to what our client should see.
        """
        status = response.code
        code = await self._error_code(response) if method != "HEAD" else None
        if status == 404:
            if code not in _NOT_FOUND_CODES:
                code = {"manifest": "MANIFEST_UNKNOWN", "blob": "BLOB_UNKNOWN"}.get(what, "NAME_UNKNOWN")
            return errors.RegistryError(404, code, f"{what} unknown upstream", {"path": path})
        if status == 429:
            return errors.too_many_requests(_header(response, "Retry-After"))
        if status in (401, 403):
            return errors.unavailable(f"{method} {path}: upstream refused the mirror's credentials ({status})")
        if status >= 500:
            return errors.unavailable(f"{method} {path}: upstream answered {status}")
        return errors.unavailable(f"{method} {path}: unexpected upstream answer {status} {code or ''}".rstrip())

    async def _error_code(self, response):
        """
        The first OCI error code in an upstream error body, if it has one; the
        body may as well be text, HTML or nothing.
        """
        try:
            body = await self._read(response, ERROR_BODY_LIMIT, "error")
            return json.loads(body)["errors"][0]["code"]
        except Exception:  # a broken or foreign error body must not hide the error itself
            return None

    async def _discard(self, response):
        try:
            await self._read(response, ERROR_BODY_LIMIT, "error")
        except errors.RegistryError:
            pass

    async def _read(self, response, limit, what):
        """
        Read a small body whole: at most C{limit} bytes, and never silent for
        longer than the idle timeout.
        """
        done = Deferred()
        response.deliverBody(_SmallBody(done, limit, self._reactor, self.idle_timeout))
        try:
            return await done
        except _TooLarge:
            raise errors.unavailable(f"upstream {what} is larger than {limit} bytes") from None
        except _Silent:
            raise errors.upstream_timeout(f"upstream {what} body stalled") from None
        except Exception as e:
            raise errors.unavailable(f"upstream {what} body broke off: {_describe(e)}") from e


class _TooLarge(Exception):
    pass


class _Silent(Exception):
    pass


class _SmallBody(Protocol):
    """
    Collects a small response body, giving up on one that is too large or
    goes silent.
    """

    def __init__(self, done, limit, reactor, idle_timeout):
        self._done = done
        self._limit = limit
        self._chunks = []
        self._received = 0
        self._silence = Silence(reactor, idle_timeout, lambda: self._give_up(_Silent()))
        self._silence.listen()

    def dataReceived(self, data):
        if self._done.called:
            return
        self._received += len(data)
        if self._received > self._limit:
            self._give_up(_TooLarge())
            return
        self._chunks.append(data)
        self._silence.heard()

    def _give_up(self, why):
        self._silence.stop()
        self._done.errback(Failure(why))
        self.transport.stopProducing()

    def connectionLost(self, reason):
        self._silence.stop()
        if self._done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):  # a manifest's digest is checked after
            self._done.callback(b"".join(self._chunks))
        else:
            self._done.errback(reason)


def _resolve(base, location):
    """
    An absolute http(s) URL for a redirect's C{Location}, or None for one we
    will not follow (another scheme, credentials in it, or malformed).
    """
    try:
        url = urljoin(base, location)
        parts = urlsplit(url)
        parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    return url


def _origin(url):
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def _path_of(url):
    """
    A URL for an error message: the path only, since a realm's query may
    name accounts.
    """
    return url.split("?")[0]


def _content_length(response):
    """
    The Content-Length header as a number (a HEAD response has no body, so
    C{response.length} says 0 whatever the header says).
    """
    value = _header(response, "Content-Length")
    return int(value) if value and value.isdigit() else None


def _header(response, name):
    values = _headers(response, name)
    return values[0] if values else None


def _headers(response, name):
    """
    Header values as text; latin-1 never fails to decode, whatever an
    upstream sends.
    """
    return [v.decode("latin-1") for v in response.headers.getRawHeaders(name.encode("ascii"), [])]


def _timed_out(e):
    reasons = getattr(e, "reasons", None) or []
    return any(r.check(CancelledError, TimeoutError, ConnectingCancelledError) for r in reasons)


def _describe(e):
    if isinstance(e, (ResponseFailed, ResponseNeverReceived)) and e.reasons:
        return "; ".join(r.getErrorMessage() for r in e.reasons)
    return str(e) or type(e).__name__
