"""
Repository names, tags and digests: the grammar of the distribution spec.

Everything that comes from a request passes through here before it may reach
a storage key, a file path or an upstream URL (DESIGN.md invariant 5), so the
checks are strict and the results are small immutable values.
"""

import hashlib
import re
from dataclasses import dataclass

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"[0-9a-f]+")

MAX_NAME_LENGTH = 255


class InvalidReference(ValueError):
    """
    A name, tag or digest that breaks the grammar.

    ``kind`` is ``"name"``, ``"tag"`` or ``"digest"`` so that the API can pick
    the matching OCI error code.
    """

    def __init__(self, kind, value, why):
        super().__init__(f"invalid {kind} {value!r}: {why}")
        self.kind = kind
        self.value = value
        self.why = why


def parse_name(text):
    """
    Return C{text} if it is a valid repository name, else raise.
    """
    if len(text) > MAX_NAME_LENGTH:
        raise InvalidReference("name", text[:64] + "...", "longer than 255 characters")
    if not _NAME.fullmatch(text):
        raise InvalidReference("name", text, "does not match the repository name grammar")
    return text


def parse_tag(text):
    """
    Return C{text} if it is a valid tag, else raise.
    """
    if not _TAG.fullmatch(text):
        shown = text if len(text) <= 64 else text[:64] + "..."
        raise InvalidReference("tag", shown, "does not match the tag grammar")
    return text


@dataclass(frozen=True)
class Digest:
    """
    A content digest such as ``sha256:4f3c...``; only algorithms we can verify.
    """

    algorithm: str
    hex: str

    def __str__(self):
        return f"{self.algorithm}:{self.hex}"

    def hasher(self):
        """
        A fresh hash object for this digest's algorithm.
        """
        return hashlib.new(self.algorithm)

    def matches(self, data):
        """
        Whether C{data} (bytes) hashes to this digest.
        """
        return hashlib.new(self.algorithm, data).hexdigest() == self.hex


def parse_digest(text):
    """
    Parse ``algorithm:hex`` for the algorithms we can verify (sha256, sha512).
    """
    algorithm, sep, hexpart = text.partition(":")
    if not sep:
        raise InvalidReference("digest", text[:80], "expected algorithm:hex")
    expected = _HEX_LENGTHS.get(algorithm)
    if expected is None:
        raise InvalidReference("digest", text[:80], "unsupported algorithm")
    if len(hexpart) != expected or not _HEX.fullmatch(hexpart):
        raise InvalidReference(
            "digest", text[:80], f"{algorithm} needs {expected} lowercase hex digits"
        )
    return Digest(algorithm, hexpart)


def sha256_of(data):
    """
    The sha256 L{Digest} of C{data}.
    """
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def parse_reference(text):
    """
    A manifest reference is a digest when it contains a colon, else a tag.

    Returns a L{Digest} or a C{str} tag.
    """
    if ":" in text:
        return parse_digest(text)
    return parse_tag(text)
