"""
Copy bytes from a file to an HTTP response at the client's pace.

One L{FileStreamer} feeds one consumer (a request) from one open file. It is
an L{IPushProducer} registered on the consumer, so the client's socket pauses
and resumes it, and at most one chunk is in flight beyond the transport's own
buffer whatever the file's size. The file may still be growing while a fill
downloads into it: C{available} says how much may be read now, and the fill
calls L{FileStreamer.wake} when that grows.
"""

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

CHUNK_SIZE = 512 * 1024


class StreamBroken(Exception):
    """
    The bytes could not be delivered whole; the response must be aborted.
    """


@implementer(IPushProducer)
class FileStreamer:
    """
    Stream C{file[start:end]} into C{consumer}.

    @param available: returns how many bytes of the file may be read now;
        C{None} means all of them are there already.
    """

    def __init__(self, file, consumer, start, end, available=None, chunk_size=CHUNK_SIZE):
        self._file = file
        self._consumer = consumer
        self._position = start
        self._end = end
        self._available = available
        self._chunk_size = chunk_size
        self._paused = False
        self._pumping = False
        self._done = Deferred(lambda d: self.stopProducing())
        self._file.seek(start)

    def start(self):
        """
        Register on the consumer and begin; the result fires when the range
        has been written, or fails with L{StreamBroken} or L{ConnectionLost}.
        """
        self._consumer.registerProducer(self, True)
        self._pump()
        return self._done

    def wake(self):
        """
        More of the file is available; go on if the consumer wants it.
        """
        self._pump()

    def fail(self, reason):
        """
        The source broke (a fill was aborted): give up on this response.
        """
        self._close(Failure(StreamBroken(reason)))

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._pump()

    def stopProducing(self):
        self._close(Failure(ConnectionLost("the client went away")))

    def _pump(self):
        if self._pumping:
            return  # consumer.write() can call back into resumeProducing
        self._pumping = True
        try:
            while not self._paused and not self._done.called:
                limit = self._end if self._available is None else min(self._end, self._available())
                if self._position >= limit:
                    if self._position >= self._end:
                        self._finish()
                    return
                data = self._file.read(min(self._chunk_size, limit - self._position))
                if not data:
                    self.fail("the file ended early")
                    return
                self._position += len(data)
                self._consumer.write(data)
        except OSError as e:
            self.fail(f"reading failed: {e}")
        finally:
            self._pumping = False

    def _finish(self):
        self._unregister()
        self._file.close()
        self._done.callback(None)

    def _close(self, failure):
        if self._done.called:
            return
        self._unregister()
        self._file.close()
        self._done.errback(failure)

    def _unregister(self):
        """
        Leave the consumer; a request whose client is gone has dropped its
        channel already and refuses, which is fine.
        """
        try:
            self._consumer.unregisterProducer()
        except (AttributeError, RuntimeError):
            pass
