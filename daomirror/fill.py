"""
One blob transfer from upstream into storage, shared by every client that
wants the blob while it runs.

The upstream body is delivered into L{_FillProtocol}, which hands each chunk
to the storage writer (which hashes it) and wakes the readers. Each reader is
a streamer going at its own client's pace: clients keeping up with the
upstream are sent the newest bytes from memory (L{RecentBytes}), so the disk
never sets their speed; one that falls behind reads the writer's staging
file, so a slow client slows only itself and its bytes wait on disk, not in
memory. Readers are never given the last byte of their range before the
whole body was verified: a broken transfer can only ever end in an aborted
connection, never in a clean short or wrong body (DESIGN.md invariants 1
and 8). A storage failure ends the transfer at once.
"""

from bisect import bisect_right

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from .silence import Silence, give_up_on_blob
from .storage import VerificationFailed
from .streaming import IGrowing, stream

BODY_IDLE_TIMEOUT = 60.0

# Bytes the writer has stored stay in memory this much longer, for clients
# a little behind the newest bytes (a socket buffer's worth, say)...
KEEP_BEHIND = 4 * 1024 * 1024
# ...and as long as a client at most this far behind the newest byte has yet
# to send them: on a busy machine a client that keeps up on the whole still
# lags by several MiB at times, and had it to read the staging file, written
# past the page cache, it would wait for the disk.
FOLLOW_WINDOW = 16 * 1024 * 1024

log = Logger()


class FillFailed(Exception):
    """
    The transfer broke or its bytes were wrong; nothing was committed.
    """


@implementer(IGrowing)
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
        self._recent = RecentBytes()
        self._verified_waiters = []
        self.outcome = None
        self._protocol = None
        self.done = Deferred()
        writer.watch(self._stored)

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
        if start >= end and self.outcome is not True:
            # No last byte to hold back (an upstream claiming an empty body):
            # the end of the response waits for the digest instead.
            return self.wait_verified()
        streamer, finished = stream(self._writer.open_reader(), consumer, start, end, self)
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

    def readable(self, end):
        """
        How far a reader whose range ends at C{end} may go: all of it once
        verified, else what has arrived but never its range's last byte
        (which is held back until the digest has been checked, so that no
        response ends cleanly on bytes that might be wrong).
        """
        received = self._recent.end
        if self.outcome is True:
            return received
        return min(received, end - 1)

    def in_memory(self, position, limit):
        return self._recent.get(position, limit)

    def in_file(self):
        return self._writer.bytes_written

    def _received(self, data):
        self._recent.add(data)
        self._writer.write(data)
        self._wake_readers()

    def _stored(self):
        if self._writer.error is not None and self.outcome is None:
            self._fail(Failure(FillFailed(f"{self.digest}: storage failed: {self._writer.error}")))
            self._protocol.transport.stopProducing()
            return
        self._recent.forget_before(self._needed_from())
        self._wake_readers()

    def _needed_from(self):
        """
        Where the bytes still worth holding in memory begin: those not yet in
        the file, KEEP_BEHIND before them, and what any reader in the
        FOLLOW_WINDOW has yet to send. A reader further behind reads the
        file, so that memory stays bounded whoever is slow.
        """
        newest = self._recent.end
        needed = self._writer.bytes_written - KEEP_BEHIND
        for reader in self._readers:
            if newest - FOLLOW_WINDOW <= reader.position < needed:
                needed = reader.position
        return needed

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
            self.size = self._recent.end
        self._recent.forget_before(self.size)  # every byte is in the file now
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
        if self.outcome is not None:
            return  # failed already (storage broke while the digest was being checked)
        log.warn("fill of {digest} failed: {why}", digest=str(self.digest), why=failure.getErrorMessage())
        self.outcome = failure
        self._recent.forget_before(self._recent.end)
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
    that goes silent for too long (L{Silence}).
    """

    def __init__(self, fill):
        self._fill = fill
        self._silence = Silence(fill._reactor, fill._idle_timeout,
                                lambda: give_up_on_blob(self.transport, fill._idle_timeout, fill.digest))

    def connectionMade(self):
        _read_in_bigger_pieces(self.transport)
        self._silence.listen()
        # The writer pauses the upstream (through us) while the disk is behind.
        self._fill._writer.registerProducer(self, True)

    def dataReceived(self, data):
        if self._fill.outcome is not None:
            return  # failed already; a pause is advisory, so bytes may still come
        self._silence.heard()
        self._fill._received(data)

    def pauseProducing(self):
        """
        The writer is behind: stop reading upstream. Silence while we are
        the ones not listening is not the upstream's fault.
        """
        self._silence.stop()
        self.transport.pauseProducing()

    def resumeProducing(self):
        if self._fill.outcome is None:
            self._silence.listen()
        self.transport.resumeProducing()

    def stopProducing(self):
        self.transport.stopProducing()

    def connectionLost(self, reason):
        self._silence.stop()
        self._fill._writer.unregisterProducer()
        self._fill._ended(reason)


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


class RecentBytes:
    """
    The newest bytes of a transfer, held in memory as they arrived until
    told to forget them.

    @ivar start: the offset of the first byte still held.
    @ivar end: how many bytes have arrived in all.
    """

    def __init__(self):
        self._offsets = []
        self._chunks = []
        self.start = 0
        self.end = 0

    def add(self, data):
        self._offsets.append(self.end)
        self._chunks.append(data)
        self.end += len(data)

    def forget_before(self, offset):
        """
        Let go of the chunks that end at or before C{offset}.
        """
        drop = 0
        while drop < len(self._chunks) and self._offsets[drop] + len(self._chunks[drop]) <= offset:
            drop += 1
        if drop:
            del self._offsets[:drop], self._chunks[:drop]
            self.start = self._offsets[0] if self._offsets else self.end

    def get(self, position, limit):
        """
        The held bytes from C{position} on, up to one chunk and not past
        C{limit}; None if they are not held.
        """
        if not self.start <= position < min(limit, self.end):
            return None
        index = bisect_right(self._offsets, position) - 1
        offset, chunk = self._offsets[index], self._chunks[index]
        stop = min(len(chunk), limit - offset)
        if position == offset and stop == len(chunk):
            return chunk
        return memoryview(chunk)[position - offset:stop]
