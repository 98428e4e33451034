"""
Giving up on an upstream body that goes silent.

Never a deadline on a whole body (a big layer on a slow link is
legitimate): only on a silence longer than C{idle_timeout} while we are
listening. While we have paused the body ourselves, the silence is ours,
not the upstream's, and the timer is off.
"""

from twisted.logger import Logger

log = Logger()


class Silence:
    """
    Calls C{on_silence()} once nothing has been heard for C{seconds} while
    listening.
    """

    def __init__(self, reactor, seconds, on_silence):
        self._reactor = reactor
        self._seconds = seconds
        self._on_silence = on_silence
        self._call = None

    def listen(self):
        """
        Start (or go on) counting the silence.
        """
        if not self._counting():
            self._call = self._reactor.callLater(self._seconds, self._on_silence)

    def heard(self):
        """
        Bytes came: the silence starts again from now.
        """
        if self._counting():
            self._call.reset(self._seconds)

    def stop(self):
        """
        Not listening (paused by us, or the body is over).
        """
        if self._counting():
            self._call.cancel()

    def _counting(self):
        return self._call is not None and self._call.active()


def give_up_on_blob(transport, seconds, digest):
    """
    Stop the body of blob C{digest} on C{transport}, silent for C{seconds}.
    """
    log.warn("upstream sent nothing for {seconds}s during {digest}; giving up", seconds=seconds, digest=str(digest))
    transport.stopProducing()
