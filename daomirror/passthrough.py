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
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from zope.interface import implementer

from .streaming import StreamBroken

log = Logger()


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
        self._reactor = reactor
        self._idle_timeout = idle_timeout
        self._hasher = digest.hasher()
        self._received = 0
        self._held = b""  # the range's last byte, until the digest matched
        self._idle = None
        self.done = Deferred()

    def connectionMade(self):
        # The timer first: registering may pause or stop us at once.
        self._idle = self._reactor.callLater(self._idle_timeout, self._silent)
        self._consumer.registerProducer(self, True)

    def dataReceived(self, data):
        if self.done.called:
            return  # the client left; a stop is not instant
        if self._idle.active():
            self._idle.reset(self._idle_timeout)
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
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
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
        # Silence while the client is not listening is not the upstream's fault.
        if self._idle.active():
            self._idle.cancel()
        self.transport.pauseProducing()

    def resumeProducing(self):
        if not self._idle.active() and not self.done.called:
            self._idle = self._reactor.callLater(self._idle_timeout, self._silent)
        self.transport.resumeProducing()

    def stopProducing(self):
        if not self.done.called:
            self.done.errback(ConnectionLost("the client went away"))
        self.transport.stopProducing()

    def _silent(self):
        log.warn("upstream sent nothing for {seconds}s during {digest}; giving up",
                 seconds=self._idle_timeout, digest=str(self._digest))
        self.transport.stopProducing()
