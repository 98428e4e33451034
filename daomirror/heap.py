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
