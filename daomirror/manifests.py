"""
What a manifest's digest covers.

For every current format it is the hash of the exact bytes. The old signed
schema 1 format (``application/vnd.docker.distribution.manifest.v1+prettyjws``,
which a registry still sends to a client without an C{Accept} header) is the
exception: its digest covers the signed payload, i.e. the bytes without the
``signatures`` block, which libtrust reconstructs from each signature's
protected header (C{formatLength} and C{formatTail}).
"""

import base64
import json

SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def digested_bytes(body, media_type):
    """
    The bytes that C{body}'s digest is computed over.
    """
    if media_type.split(";")[0].strip() != SCHEMA1_SIGNED:
        return body
    try:
        signature = json.loads(body)["signatures"][0]
        protected = json.loads(_unpadded_b64decode(signature["protected"]))
        return body[:int(protected["formatLength"])] + _unpadded_b64decode(protected["formatTail"])
    except (ValueError, KeyError, IndexError, TypeError):
        return body  # not a well-formed signed manifest: it can only match as plain bytes


def _unpadded_b64decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
