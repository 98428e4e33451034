"""
The name, tag and digest grammar: everything from a request passes here first.
"""

import pytest

from daomirror.reference import (
    Digest, InvalidReference, parse_digest, parse_name, parse_reference, parse_tag,
)

HEX = "a" * 64


@pytest.mark.parametrize("name", [
    "busybox", "library/busybox", "team/tools/cli", "a.b_c__d-e---f/g0", "x" * 255,
])
def test_valid_names(name):
    assert parse_name(name) == name


@pytest.mark.parametrize("name", [
    "", "a//b", "R/UPPER", "/a", "a/", "a..b", "-a", "a-", "a/../b", "a/./b", "..", "a_", "a%2fb",
    "x" * 256, "a b", "a\x00b",
])
def test_invalid_names(name):
    with pytest.raises(InvalidReference) as e:
        parse_name(name)
    assert e.value.kind == "name"


@pytest.mark.parametrize("tag", ["latest", "v1.2.3", "_x", "A-b.c_d", "a" * 128])
def test_valid_tags(tag):
    assert parse_tag(tag) == tag


@pytest.mark.parametrize("tag", ["", ".hidden", "-x", "a" * 129, "a" * 300, "a/b", "a:b", "..", "a b"])
def test_invalid_tags(tag):
    with pytest.raises(InvalidReference) as e:
        parse_tag(tag)
    assert e.value.kind == "tag"


def test_digest_round_trip():
    digest = parse_digest("sha256:" + HEX)
    assert digest == Digest("sha256", HEX)
    assert str(digest) == "sha256:" + HEX
    assert parse_digest("sha512:" + "0" * 128).algorithm == "sha512"


@pytest.mark.parametrize("text", [
    "sha256:abc", "sha256:" + "A" * 64, "sha256:" + "a" * 65, "md5:" + "a" * 32, HEX,
    "sha256:..%2f..%2fetc%2fpasswd", "sha256:../../etc/passwd", "sha512:" + "a" * 64, ":" + HEX,
])
def test_invalid_digests(text):
    with pytest.raises(InvalidReference) as e:
        parse_digest(text)
    assert e.value.kind == "digest"


def test_reference_is_digest_when_it_has_a_colon():
    assert isinstance(parse_reference("sha256:" + HEX), Digest)
    assert parse_reference("latest") == "latest"
    with pytest.raises(InvalidReference) as e:
        parse_reference("sha256:short")
    assert e.value.kind == "digest"


def test_digest_matches_only_its_bytes():
    import hashlib

    digest = Digest("sha256", hashlib.sha256(b"hello").hexdigest())
    assert digest.matches(b"hello")
    assert not digest.matches(b"hello!")
