"""
The upstream registry, spoken to with treq.

Each method asks for one thing and either returns the upstream's answer or
raises a L{RegistryError} saying what the client should see (DESIGN.md's
status table): this module knows nothing about caching.
"""

import json

import treq
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectError, TimeoutError
from twisted.web.client import ResponseFailed
from twisted.logger import Logger

from . import errors

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

log = Logger()


class UpstreamManifest:
    """
    A manifest as the upstream sent it (C{body} is None for a HEAD).
    """

    def __init__(self, body, media_type, digest, size):
        self.body = body
        self.media_type = media_type
        self.digest = digest
        self.size = size


class Upstream:
    """
    One upstream registry at C{url}, reached through C{client} (a
    L{treq.client.HTTPClient} whose pool the caller owns).
    """

    def __init__(self, url, client, headers_timeout=60.0):
        self.url = url
        self._client = client
        self._headers_timeout = headers_timeout

    async def manifest(self, name, reference, accept, method="GET"):
        """
        Fetch (or C{HEAD}) a manifest with the client's C{Accept} values.
        """
        headers = {"Accept": list(accept)} if accept else {}
        response = await self._request(method, f"/v2/{name}/manifests/{reference}", headers, "manifest")
        media_type = _header(response, "Content-Type") or ""
        digest = _header(response, "Docker-Content-Digest")
        if method == "HEAD":
            return UpstreamManifest(None, media_type, digest, _content_length(response))
        body = await _read_limited(response, MANIFEST_SIZE_LIMIT, "manifest")
        return UpstreamManifest(body, media_type, digest, len(body))

    async def blob(self, name, digest):
        """
        Start a blob download; the caller delivers the body with
        C{response.deliverBody}.
        """
        return await self._request("GET", f"/v2/{name}/blobs/{digest}", {}, "blob")

    async def blob_size(self, name, digest):
        """
        Ask with a C{HEAD} whether the blob exists in C{name}; its size or None.
        """
        response = await self._request("HEAD", f"/v2/{name}/blobs/{digest}", {}, "blob")
        return _content_length(response)

    async def tags(self, name, query):
        """
        The tag list (body and content type), with the client's query string.
        """
        path = f"/v2/{name}/tags/list" + (f"?{query}" if query else "")
        response = await self._request("GET", path, {}, "name")
        body = await _read_limited(response, MANIFEST_SIZE_LIMIT, "tag list")
        return body, _header(response, "Content-Type") or "application/json", _header(response, "Link")

    async def _request(self, method, path, headers, what):
        url = self.url + path
        try:
            response = await self._client.request(
                method, url, headers=headers, unbuffered=True, timeout=self._headers_timeout
            )
        except (CancelledError, TimeoutError) as e:
            raise errors.upstream_timeout(f"{method} {path}: no answer from upstream in time") from e
        except (ConnectError, ResponseFailed, OSError) as e:
            raise errors.unavailable(f"{method} {path}: cannot reach upstream: {_describe(e)}") from e
        if response.code == 200:
            return response
        raise await _error_for(response, method, path, what)


async def _error_for(response, method, path, what):
    """
    Map a non-200 upstream answer to what our client should see.
    """
    status = response.code
    code = await _upstream_error_code(response) if method != "HEAD" else None
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


async def _upstream_error_code(response):
    """
    The first OCI error code in an upstream error body, if it has one; the
    body may as well be text, HTML or nothing.
    """
    try:
        body = await _read_limited(response, ERROR_BODY_LIMIT, "error")
        return json.loads(body)["errors"][0]["code"]
    except Exception:  # a broken or foreign error body must not hide the error itself
        return None


async def _read_limited(response, limit, what):
    """
    Read a small body whole, refusing one larger than C{limit}.
    """
    chunks = []
    received = [0]

    def collect(data):
        received[0] += len(data)
        if received[0] > limit:
            raise errors.unavailable(f"upstream {what} is larger than {limit} bytes")
        chunks.append(data)

    try:
        await treq.collect(response, collect)
    except errors.RegistryError:
        raise
    except Exception as e:
        raise errors.unavailable(f"upstream {what} body broke off: {_describe(e)}") from e
    return b"".join(chunks)


def _content_length(response):
    """
    The Content-Length header as a number (a HEAD response has no body, so
    C{response.length} says 0 whatever the header says).
    """
    value = _header(response, "Content-Length")
    return int(value) if value and value.isdigit() else None


def _header(response, name):
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


def _describe(e):
    if isinstance(e, ResponseFailed) and e.reasons:
        return "; ".join(r.getErrorMessage() for r in e.reasons)
    return str(e) or type(e).__name__

