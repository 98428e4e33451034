"""
Give the memory a finished transfer freed back to the system.

Why: a download's chunks (a MiB each, up to about 17 MiB at a time) come
from the C heap, and when the transfer ends glibc keeps the freed pages for
reuse: a daemon that served one cold pull would hold its high-water mark
from then on. C{malloc_trim} hands them back. Where the C library has no
C{malloc_trim} (musl, macOS), this does nothing.
"""

import ctypes

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None


def give_back():
    """
    Return the heap's free pages to the system (about a tenth of a
    millisecond after a transfer).
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


# How long transfers must have stopped before the pages go back: not after
# each one, or a burst of pulls would fault them in again for every layer.
QUIET_FOR = 1.0


class GiveBackWhenQuiet:
    """
    Calls L{give_back} once no transfer has ended for C{QUIET_FOR} seconds
    and C{busy()} says none is running.
    """

    def __init__(self, reactor, busy, quiet_for=QUIET_FOR):
        self._reactor = reactor
        self._busy = busy
        self._quiet_for = quiet_for
        self._call = None

    def transfer_ended(self):
        if self._call is not None and self._call.active():
            self._call.reset(self._quiet_for)
        else:
            self._call = self._reactor.callLater(self._quiet_for, self._quiet)

    def stop(self):
        if self._call is not None and self._call.active():
            self._call.cancel()

    def _quiet(self):
        if not self._busy():
            give_back()
