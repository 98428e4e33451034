"""
The API's error path, driven in memory through the real site: once a
response is under way, no failure may end it cleanly (DESIGN.md invariant 8).
"""

import hashlib

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.web.test.requesthelper import DummyChannel

from daomirror.mirror import Blob
from daomirror.reference import Digest
from daomirror.service import make_site

DATA = b"x" * 1000
DIGEST = Digest("sha256", hashlib.sha256(DATA).hexdigest())


class BrokenMidway:
    """
    A mirror whose blob writes half its bytes, then fails in a way nobody
    planned for.
    """

    def __init__(self):
        self.failing = Deferred()

    async def blob(self, name, digest):
        def stream(request, start, end):
            request.write(DATA[:500])
            return self.failing

        return Blob(digest, len(DATA), stream)


def get(site, path):
    channel = DummyChannel()
    channel.transport = StringTransport()
    channel.site = site
    request = site.requestFactory(channel, queued=False)
    request.gotLength(0)
    request.requestHeaders.setRawHeaders(b"host", [b"mirror"])
    request.requestReceived(b"GET", path, b"HTTP/1.1")
    return request, channel.transport


def test_an_unexpected_failure_after_the_body_started_aborts_the_connection():
    mirror = BrokenMidway()
    _, transport = get(make_site(mirror), f"/v2/library/x/blobs/{DIGEST}".encode())
    assert b"200 OK" in transport.value() and transport.value().endswith(DATA[:500])
    mirror.failing.errback(RuntimeError("a bug"))
    assert transport.disconnected, "the client sees a broken connection, not a clean end"
    assert transport.value().endswith(DATA[:500]), "and no error body after the bytes"
