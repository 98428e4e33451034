"""
A blob passed from upstream to one client without storage: the client's
socket paces the upstream, and a body that does not match its digest never
ends the response cleanly. In memory, with a fake clock and no sockets.
"""

import hashlib

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from daomirror.passthrough import PassThrough
from daomirror.reference import Digest
from daomirror.streaming import StreamBroken

DATA = bytes(range(256)) * 1024  # 256 KiB
DIGEST = Digest("sha256", hashlib.sha256(DATA).hexdigest())
IDLE = 30.0


def relay(start=0, end=len(DATA)):
    """
    A pass-through of DATA's range to an in-memory client, connected to an
    in-memory upstream; returns it, the client and the upstream transport.
    """
    client, upstream, clock = StringTransport(), StringTransport(), Clock()
    passing = PassThrough(DIGEST, len(DATA), client, start, end, clock, IDLE)
    passing.makeConnection(upstream)
    passing.clock = clock
    return passing, client, upstream


def feed(passing, data, piece=10000):
    for offset in range(0, len(data), piece):
        passing.dataReceived(data[offset:offset + piece])


@pytest.mark.parametrize("start, end", [(0, len(DATA)), (1000, 5000), (len(DATA) - 1, len(DATA))])
def test_the_range_goes_to_the_client_and_its_last_byte_waits_for_the_digest(start, end):
    passing, client, _ = relay(start, end)
    feed(passing, DATA)
    assert client.value() == DATA[start:end - 1]
    assert not passing.done.called
    passing.connectionLost(Failure(ResponseDone()))
    assert client.value() == DATA[start:end]
    assert passing.done.called and passing.done.result is None


@pytest.mark.parametrize("body, why", [
    (b"X" + DATA[1:], ResponseDone()),   # wrong bytes
    (DATA[:-1], ResponseDone()),         # short
    (DATA[:1000], ConnectionDone()),     # cut
])
def test_a_broken_body_fails_and_its_last_byte_never_goes(body, why):
    passing, client, _ = relay()
    failures = []
    passing.done.addErrback(failures.append)
    feed(passing, body)
    passing.connectionLost(Failure(why))
    assert failures and failures[0].check(StreamBroken)
    assert len(client.value()) < len(DATA)


def test_the_client_pauses_and_resumes_the_upstream():
    passing, client, upstream = relay()
    assert client.producer is passing and client.streaming
    client.producer.pauseProducing()
    assert upstream.producerState == "paused"
    passing.clock.advance(IDLE * 2)  # silence while the client is not reading is not the upstream's fault
    assert upstream.producerState == "paused"
    client.producer.resumeProducing()
    assert upstream.producerState == "producing"


def test_an_upstream_that_goes_silent_is_given_up():
    passing, _, upstream = relay()
    feed(passing, DATA[:1000])
    passing.clock.advance(IDLE + 1)
    assert upstream.producerState == "stopped"


def test_a_client_that_leaves_stops_the_upstream():
    passing, client, upstream = relay()
    failures = []
    passing.done.addErrback(failures.append)
    feed(passing, DATA[:1000])
    client.producer.stopProducing()
    assert failures and failures[0].check(ConnectionLost)
    assert upstream.producerState == "stopped"
    passing.connectionLost(Failure(ConnectionDone()))  # what the stop leads to: nothing more happens
    assert len(failures) == 1
