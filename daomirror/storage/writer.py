"""
The part of a writer that every driver shares: hash the bytes as they pass,
check them once against the expected digest and length, and only then allow
the driver to publish them (DESIGN.md invariant 1).
"""

from twisted.internet.defer import maybeDeferred

from .interfaces import VerificationFailed


class VerifyingWriter:
    """
    Base for L{IWriter} implementations. A driver supplies C{_append(data)},
    C{_publish()} (may return a Deferred) and C{_discard()}.
    """

    def __init__(self, digest):
        self._digest = digest
        self._hash = digest.hasher()
        self._state = "writing"
        self.bytes_written = 0

    def write(self, data):
        self._require("writing")
        self._hash.update(data)
        self._append(data)
        self.bytes_written += len(data)

    def verify(self, size):
        self._require("writing")
        actual = self._hash.hexdigest()
        if actual != self._digest.hex or (size is not None and size != self.bytes_written):
            self.abort()
            raise VerificationFailed(
                f"expected {self._digest} ({'any' if size is None else size} bytes), got "
                f"{self._digest.algorithm}:{actual} ({self.bytes_written} bytes)"
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

    def _require(self, state):
        if self._state != state:
            raise RuntimeError(f"writer is {self._state}, not {state}")
