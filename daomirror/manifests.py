"""
What a fetched manifest is: its media type, and the bytes its digest covers.

For every current format the digest is the hash of the exact bytes. The old
signed schema 1 format (``application/vnd.docker.distribution.manifest.v1+prettyjws``,
which a registry still sends to a client without an C{Accept} header) is the
exception: its digest covers the signed payload, the bytes without the
``signatures`` block, which libtrust rebuilds from a signature's protected
header (C{formatLength} and C{formatTail}).
"""

import base64
import json
import re

SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*([ \t]*;[ -~]*)?")


class NotAManifest(ValueError):
    """
    What the upstream sent cannot be a manifest.
    """


def media_type_of(content_type, body):
    """
    The media type to keep and serve: the upstream's Content-Type as it sent
    it, or the C{mediaType} inside the manifest when it sent none.
    """
    content_type = (content_type or "").strip()
    if not content_type and body is not None:
        try:
            content_type = json.loads(body).get("mediaType") or ""
        except (ValueError, AttributeError):
            content_type = ""
        if not isinstance(content_type, str) or not _MEDIA_TYPE.fullmatch(content_type):
            return "application/json"
    if not _MEDIA_TYPE.fullmatch(content_type):
        raise NotAManifest(f"unusable Content-Type {content_type[:80]!r}")
    return content_type


def digested_bytes(body, media_type):
    """
    The bytes that C{body}'s digest is computed over; raises L{NotAManifest}
    for a body that is not a JSON object.
    """
    try:
        document = json.loads(body)
    except ValueError:
        raise NotAManifest("the body is not JSON") from None
    if not isinstance(document, dict):
        raise NotAManifest("the body is not a JSON object")
    if media_type.split(";")[0].strip() != SCHEMA1_SIGNED:
        return body
    payload = _schema1_payload(body, document)
    return body if payload is None else payload


def _schema1_payload(body, document):
    """
    The signed payload of a schema 1 manifest, only if it is the very same
    document as the body without its signatures (else a forged envelope could
    carry any content under another manifest's digest).
    """
    try:
        protected = json.loads(_unpadded_b64decode(document["signatures"][0]["protected"]))
        length, tail = int(protected["formatLength"]), _unpadded_b64decode(protected["formatTail"])
        payload = body[:length] + tail
        unsigned = {k: v for k, v in document.items() if k != "signatures"}
        if length > len(body) or not body.endswith(tail) or json.loads(payload) != unsigned:
            return None
        return payload
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _unpadded_b64decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
