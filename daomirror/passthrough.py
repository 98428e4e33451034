"""
A blob straight from the upstream to one client, stored nowhere: what the
mirror does when its storage cannot take a blob (DESIGN.md section 1: serve
from upstream without caching if possible).

The client's socket paces the upstream, as a producer registered on the
client's request pauses and resumes the upstream connection. The bytes are
hashed as they pass, and the range's last byte is held back until the whole
body has matched its digest and length, so that a wrong or short body never
ends a response cleanly (DESIGN.md invariant 8).
"""

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.web.client import ResponseDone
from zope.interface import implementer

from .silence import Silence, give_up_on_blob
from .streaming import StreamBroken


@implementer(IPushProducer)
class PassThrough(Protocol):
    """
    Receives an upstream blob body and writes C{[start, end)} of it to
    C{consumer}; C{done} fires once the last byte is written, or fails with
    L{StreamBroken} (the body was wrong, short or cut) or C{ConnectionLost}
    (the client left).
    """

    def __init__(self, digest, size, consumer, start, end, reactor, idle_timeout):
        self._digest = digest
        self._size = size
        self._consumer = consumer
        self._start = start
        self._end = end
        self._silence = Silence(reactor, idle_timeout, lambda: give_up_on_blob(self.transport, idle_timeout, digest))
        self._hasher = digest.hasher()
        self._received = 0
        self._held = b""  # the range's last byte, until the digest matched
        self.done = Deferred()

    def connectionMade(self):
        # Listening first: registering may pause or stop us at once.
        self._silence.listen()
        self._consumer.registerProducer(self, True)

    def dataReceived(self, data):
        if self.done.called:
            return  # the client left; a stop is not instant
        self._silence.heard()
        begin = self._received
        self._received += len(data)
        self._hasher.update(data)
        low, high = max(self._start, begin), min(self._end, self._received)
        if low < high:
            piece = data[low - begin:high - begin]
            if high == self._end:
                piece, self._held = piece[:-1], piece[-1:]
            if piece:
                self._consumer.write(piece)

    def connectionLost(self, reason):
        self._silence.stop()
        self._consumer.unregisterProducer()
        if self.done.called:
            return
        if not reason.check(ResponseDone):
            self.done.errback(StreamBroken(f"the upstream broke off {self._digest}: {reason.getErrorMessage()}"))
        elif self._received != self._size or self._hasher.hexdigest() != self._digest.hex:
            self.done.errback(StreamBroken(f"the upstream's body of {self._digest} does not match it"))
        else:
            if self._held:
                self._consumer.write(self._held)
            self.done.callback(None)

    # IPushProducer, driven by the client's socket

    def pauseProducing(self):
        self._silence.stop()  # the client is not listening: not the upstream's fault
        self.transport.pauseProducing()

    def resumeProducing(self):
        if not self.done.called:
            self._silence.listen()
        self.transport.resumeProducing()

    def stopProducing(self):
        if not self.done.called:
            self.done.errback(ConnectionLost("the client went away"))
        self.transport.stopProducing()

