"""
One blob transfer from upstream into storage, shared by every client that
wants the blob while it runs.

The upstream body is delivered into L{_FillProtocol}, which hands each chunk
to the storage writer (which hashes it) and wakes the readers. Each reader is
a streamer reading the writer's staging file at its own client's pace,
so a slow client slows only itself and the bytes wait on disk, not in memory.
Readers are never given the last byte before the whole body was verified: a
broken transfer can only ever end in an aborted connection, never in a clean
short or wrong body (DESIGN.md invariants 1 and 8).
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from .storage import VerificationFailed
from .streaming import stream

BODY_IDLE_TIMEOUT = 60.0

log = Logger()


class FillFailed(Exception):
    """
    The transfer broke or its bytes were wrong; nothing was committed.
    """


class Fill:
    """
    Bytes of C{digest} flowing from an upstream response into C{writer}.

    @ivar size: the expected length, or None while it is unknown (the
        upstream sent no usable Content-Length).
    @ivar outcome: None while running, then True (every byte is in and
        matches the digest) or the Failure that ended it.
    @ivar done: fires when the fill is over with True if the blob was
        committed to storage, else False; never fails.
    """

    def __init__(self, digest, size, writer, reactor, idle_timeout=BODY_IDLE_TIMEOUT):
        self.digest = digest
        self.size = size
        self._writer = writer
        self._reactor = reactor
        self._idle_timeout = idle_timeout
        self._readers = set()
        self._verified_waiters = []
        self.outcome = None
        self._protocol = None
        self.done = Deferred()
        writer.watch(self._wake_readers)

    def start(self, response):
        """
        Begin receiving C{response}'s body.
        """
        self._protocol = _FillProtocol(self)
        response.deliverBody(self._protocol)

    def cancel(self):
        """
        Abandon a transfer that is still receiving (at shutdown); one that
        is verified already goes on to commit.
        """
        if self.outcome is None and self._protocol.transport is not None:
            self._protocol.transport.stopProducing()

    def attach(self, consumer, start, end):
        """
        Stream bytes C{start} to C{end} of the blob into C{consumer} as they
        arrive; the result fires when they are all written.
        """
        if isinstance(self.outcome, Failure):
            return fail(self.outcome)
        streamer, finished = stream(self._writer.open_reader(), consumer, start, end, self._readable)
        self._readers.add(streamer)
        finished.addBoth(self._detach, streamer)
        return finished

    def wait_verified(self):
        """
        A Deferred that fires when the blob is verified, or fails with
        L{FillFailed}.
        """
        if self.outcome is True:
            return succeed(None)
        if isinstance(self.outcome, Failure):
            return fail(self.outcome)
        waiter = Deferred()
        self._verified_waiters.append(waiter)
        return waiter

    def _detach(self, result, streamer):
        self._readers.discard(streamer)
        return result

    def _readable(self):
        """
        How far readers may go: all of it once verified, else all but the
        last byte (which is held back until the digest has been checked).
        """
        written = self._writer.bytes_written
        if self.outcome is True:
            return written
        return written - 1 if self.size is None or written >= self.size else written

    def _wake_readers(self):
        for reader in list(self._readers):
            reader.wake()

    def _ended(self, reason):
        if self.outcome is not None:
            return  # given up already
        # A body without a length ends with the connection (PotentialDataLoss):
        # the digest check is what tells whether it is whole.
        if reason.check(ResponseDone, PotentialDataLoss):
            verified = self._writer.verify(self.size)
            verified.addCallbacks(lambda _: self._succeed(), self._not_verified)
        else:
            self._fail(Failure(FillFailed(f"{self.digest}: upstream body broke off: {reason.getErrorMessage()}")))

    def _not_verified(self, failure):
        why = failure.getErrorMessage() if failure.check(VerificationFailed) else f"storage failed: {failure.value}"
        self._fail(Failure(FillFailed(f"{self.digest}: {why}")))

    def _succeed(self):
        self.outcome = True
        if self.size is None:
            self.size = self._writer.bytes_written
        for waiter in self._verified_waiters:
            waiter.callback(None)
        self._verified_waiters = []
        self._wake_readers()  # the held-back last byte may go now
        committed = self._writer.commit()
        committed.addCallbacks(lambda _: True, self._commit_failed)
        committed.addCallback(self.done.callback)

    def _commit_failed(self, failure):
        log.failure("committing {digest} to storage failed", failure, digest=str(self.digest))
        return False

    def _fail(self, failure):
        log.warn("fill of {digest} failed: {why}", digest=str(self.digest), why=failure.getErrorMessage())
        self.outcome = failure
        self._writer.abort()
        for waiter in self._verified_waiters:
            waiter.errback(failure)
        self._verified_waiters = []
        for reader in list(self._readers):
            reader.fail(failure.getErrorMessage())
        self.done.callback(False)


@implementer(IPushProducer)
class _FillProtocol(Protocol):
    """
    Receives the upstream body for a L{Fill}, and gives up on an upstream
    that goes silent for too long (never a deadline on the whole body: a big
    layer on a slow link is legitimate).
    """

    def __init__(self, fill):
        self._fill = fill
        self._idle = None

    def connectionMade(self):
        _read_in_bigger_pieces(self.transport)
        self._idle = self._fill._reactor.callLater(self._fill._idle_timeout, self._silent)
        # The writer pauses the upstream (through us) while the disk is behind.
        self._fill._writer.registerProducer(self, True)

    def dataReceived(self, data):
        if self._fill.outcome is not None:
            return  # failed already; a pause is advisory, so bytes may still come
        if self._idle.active():
            self._idle.reset(self._fill._idle_timeout)
        self._fill._writer.write(data)

    def pauseProducing(self):
        """
        The writer is behind: stop reading upstream. Silence while we are
        the ones not listening is not the upstream's fault.
        """
        if self._idle.active():
            self._idle.cancel()
        self.transport.pauseProducing()

    def resumeProducing(self):
        if not self._idle.active() and self._fill.outcome is None:
            self._idle = self._fill._reactor.callLater(self._fill._idle_timeout, self._silent)
        self.transport.resumeProducing()

    def stopProducing(self):
        self.transport.stopProducing()

    def connectionLost(self, reason):
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._fill._writer.unregisterProducer()
        self._fill._ended(reason)

    def _silent(self):
        log.warn("upstream sent nothing for {seconds}s during {digest}; giving up",
                 seconds=self._fill._idle_timeout, digest=str(self._fill.digest))
        self.transport.stopProducing()


RECEIVE_SIZE = 1024 * 1024


def _read_in_bigger_pieces(transport):
    """
    Let the upstream socket under a response body be read a MiB at a time
    rather than Twisted's default 64 KiB: fewer trips through the reactor
    and the HTTP parser per blob. (The body's transport is a proxy around
    the connection's own; without one this does nothing.)
    """
    connection = getattr(transport, "_producer", None)
    if isinstance(getattr(connection, "bufferSize", None), int):
        connection.bufferSize = RECEIVE_SIZE
