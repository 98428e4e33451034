"""
The part of a writer that every driver shares: the states (writing,
verifying, verified, committing, committed, aborted), one check of the bytes
against the expected digest and length before anything may be published
(DESIGN.md invariant 1), progress notifications for readers following the
writer, and backpressure on the producer that feeds it.
"""

from twisted.internet.defer import maybeDeferred

from .interfaces import VerificationFailed


class VerifyingWriter:
    """
    Base for L{IWriter} implementations. A driver supplies:
      - C{_append(data)}: take bytes (it may queue them);
      - C{_finish()}: once every byte is stored, a Deferred (or value) of
        C{(hexdigest, length)} of what was stored;
      - C{_publish()}: make the object visible (may return a Deferred);
      - C{_discard()}: forget everything.
    It calls C{_landed(total)} as bytes become readable, C{_behind()} /
    C{_caught_up()} to pause and resume the producer, and C{_broken(error)}
    when it cannot store any more.
    """

    def __init__(self, digest):
        self._digest = digest
        self._state = "writing"
        self._producer = None
        self._paused = False
        self._watchers = []
        self.bytes_written = 0
        self.error = None

    def registerProducer(self, producer, streaming):
        self._producer = producer

    def unregisterProducer(self):
        self._producer = None

    def watch(self, callback):
        self._watchers.append(callback)

    def write(self, data):
        self._require("writing")
        self._append(data)

    def verify(self, size):
        self._require("writing")
        self._state = "verifying"
        return maybeDeferred(self._finish).addCallback(self._check, size)

    def _check(self, stored, size):
        actual, length = stored
        if actual != self._digest.hex or (size is not None and size != length):
            self.abort()
            raise VerificationFailed(
                f"expected {self._digest} ({'any' if size is None else size} bytes), got "
                f"{self._digest.algorithm}:{actual} ({length} bytes)"
            )
        self._state = "verified"

    def commit(self):
        self._require("verified")
        self._state = "committing"
        return maybeDeferred(self._publish).addCallback(self._committed)

    def _committed(self, _):
        self._state = "committed"

    def abort(self):
        if self._state in ("committing", "committed", "aborted"):
            return
        self._state = "aborted"
        self._discard()

    def _landed(self, total):
        self.bytes_written = total
        for callback in self._watchers:
            callback()

    def _broken(self, error):
        """
        Storing failed: tell the watchers now, so that the transfer feeding
        this writer stops rather than holding the rest of the blob in memory.
        """
        if self.error is None:
            self.error = error
            for callback in self._watchers:
                callback()

    def _behind(self):
        if self._producer is not None and not self._paused:
            self._paused = True
            self._producer.pauseProducing()

    def _caught_up(self):
        if self._producer is not None and self._paused:
            self._paused = False
            self._producer.resumeProducing()

    def _require(self, state):
        if self._state != state:
            raise RuntimeError(f"writer is {self._state}, not {state}")
