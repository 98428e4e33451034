import pytest

from daomirror.ranges import Unsatisfiable, requested_range

ETAG = '"sha256:abc"'


@pytest.mark.parametrize("header, expected", [
    (None, None),
    ("bytes=0-99", (0, 100)),
    ("bytes=100-", (100, 1000)),
    ("bytes=-10", (990, 1000)),
    ("bytes=-5000", (0, 1000)),
    ("bytes=990-5000", (990, 1000)),
    ("bytes=999-999", (999, 1000)),
    ("BYTES=0-9", (0, 10)),
    ("bytes=0-0,5-9", None),
    ("items=0-9", None),
    ("bytes=9-3", None),
    ("bytes=-", None),
    ("bytes=abc", None),
])
def test_ranges(header, expected):
    assert requested_range(header, None, ETAG, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable(header):
    with pytest.raises(Unsatisfiable):
        requested_range(header, None, ETAG, 1000)


def test_if_range_with_another_validator_means_the_whole_blob():
    assert requested_range("bytes=10-", '"sha256:other"', ETAG, 1000) is None
    assert requested_range("bytes=10-", "Wed, 21 Oct 2015 07:28:00 GMT", ETAG, 1000) is None
    assert requested_range("bytes=10-", ETAG, ETAG, 1000) == (10, 1000)
