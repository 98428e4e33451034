"""
Copy bytes from a file to an HTTP response at the client's pace.

L{stream} picks how: on a plain TCP connection L{SocketStreamer} reads the
file into one reused buffer and sends it straight to the socket; otherwise
(TLS) one L{FileStreamer} reads chunks and writes them to the request as a
push producer that the client's socket pauses and resumes. Either way at most
one chunk is in flight beyond the socket's own buffer, whatever the file's
size. The file may still be growing while a fill downloads into it: then
an L{IGrowing} source says how much may be read now and hands out the newest
bytes from memory, and the fill calls C{wake()} when there is more.
"""

import os

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.tcp import Server
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

CHUNK_SIZE = 512 * 1024  # a FileStreamer's writes (TLS and other transports)
SMALL = 256 * 1024  # a cached range this small goes in one write
READ_CHUNK = 512 * 1024  # a SocketStreamer's buffer: big reads that stay in the CPU's cache
SENDS_PER_WAKEUP = 16  # then let other connections have the reactor


class IGrowing(Interface):
    """
    A blob still arriving: part of it is in the file, the newest part only
    in memory.
    """

    def readable(end):
        """
        How many bytes from the start of the blob a reader whose range ends
        at C{end} may have now.
        """

    def in_memory(position, limit):
        """
        The bytes from C{position} on (not past C{limit}) if they are still
        held in memory, as C{bytes} or a C{memoryview}; else None.
        """

    def in_file():
        """
        How many bytes from the start of the blob are in the file.
        """


def stream(file, consumer, start, end, growing=None):
    """
    Start streaming C{file[start:end]} into C{consumer}; returns the
    streamer (with C{wake()} and C{fail()}; None when a small, complete range
    was written at once) and a Deferred that fires when the range has been
    written.

    @param growing: an L{IGrowing} when the blob is still arriving.
    """
    if growing is None and end - start <= SMALL:
        return None, _write_whole(file, consumer, start, end)
    transport = _plain_tcp(consumer)
    if transport is not None and _has_descriptor(file):
        streamer = SocketStreamer(file, consumer, transport, start, end, growing)
    else:
        streamer = FileStreamer(file, consumer, start, end, growing)
    return streamer, streamer.start()


def _next_piece(growing, position, end):
    """
    Where the bytes at C{position} come from now: C{(data, limit)} with the
    bytes themselves if they are in memory, else C{(None, limit)} with how
    far the file may be read. C{limit <= position} means none are there yet.
    """
    if growing is None:
        return None, end
    limit = min(end, growing.readable(end))
    if position >= limit:
        return None, limit
    data = growing.in_memory(position, limit)
    if data is not None:
        return data, limit
    return None, min(limit, growing.in_file())


def _write_whole(file, consumer, start, end):
    """
    A small range in one write: cheaper than any streaming machinery.
    """
    with file:
        file.seek(start)
        data = file.read(end - start)
    if len(data) != end - start:
        return fail(StreamBroken("the file ended early"))
    consumer.write(data)
    return succeed(None)


def _has_descriptor(file):
    try:
        file.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _plain_tcp(consumer):
    """
    The TCP transport under an HTTP/1.x request, if a streamer can write to
    its socket directly: not TLS, not some other kind of consumer.
    """
    channel = getattr(consumer, "channel", None)
    transport = getattr(channel, "transport", None)
    if type(transport) is not Server or ISSLTransport.providedBy(transport):
        return None
    if getattr(consumer, "chunked", False) or consumer.method == b"HEAD":
        return None
    return transport


class StreamBroken(Exception):
    """
    The bytes could not be delivered whole; the response must be aborted.
    """


@implementer(IPushProducer)
class FileStreamer:
    """
    Stream C{file[start:end]} into C{consumer}.

    @param growing: an L{IGrowing} while the blob is still arriving; None
        when the file is complete.
    """

    def __init__(self, file, consumer, start, end, growing=None, chunk_size=CHUNK_SIZE):
        self._file = file
        self._consumer = consumer
        self._position = start
        self._end = end
        self._growing = growing
        self._chunk_size = chunk_size
        self._file_position = None  # where the file's own offset is
        self._paused = False
        self._pumping = False
        self._done = Deferred(lambda d: self.stopProducing())

    @property
    def position(self):
        """
        The offset in the blob of the next byte to send.
        """
        return self._position

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
                if self._position >= self._end:
                    self._finish()
                    return
                data, limit = _next_piece(self._growing, self._position, self._end)
                if data is None:
                    if self._position >= limit:
                        return  # wait for wake()
                    if self._file_position != self._position:  # first read, or after bytes from memory
                        self._file.seek(self._position)
                    data = self._file.read(min(self._chunk_size, limit - self._position))
                    if not data:
                        self.fail("the file ended early")
                        return
                    self._file_position = self._position + len(data)
                self._position += len(data)
                self._consumer.write(bytes(data))
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


class SocketStreamer:
    """
    Stream a file range straight to a plain TCP socket: no producer, no
    request.write, one buffer reused for every read. Bytes of a growing blob
    that are still in memory go to the socket as they are.

    Why not C{os.sendfile}: on the machine this was decided on (a virtual
    machine, Linux 6.18, loopback), C{pread} into a 512 KiB buffer that
    stays in the CPU's cache and C{send} moved a cached file at 2.9-3.9 GB/s
    with 0.13-0.18 CPU seconds per 512 MiB, C{sendfile} at 1.5-2.1 GB/s with
    0.24-0.34 s, whatever its chunk size. On a later machine of the same
    kind the two were close (send 3.8-4.4 GB/s, 0.11-0.12 s; sendfile in
    64-256 KiB chunks 3.8-5.5 GB/s, 0.09-0.13 s): benchmarks/send_or_sendfile.py
    measures both. C{send} is needed anyway for the bytes of a growing blob
    that are still in memory, so one path serves both.

    The response headers go out through Twisted as usual; then, while the
    body is sent, the transport's C{doWrite} is ours: the reactor calls it
    whenever the socket can take more, so the client paces the transfer
    just as it paces a producer. Bytes that arrive for a client waiting on
    a growing blob are sent at once, from the call that hands them in,
    while they are still in the CPU's cache; the reactor is asked to call
    back only when the socket is full, or after SENDS_PER_WAKEUP sends so
    that other connections get their turn. The transport gets its own
    C{doWrite} back when the range is sent, the client leaves or the
    source breaks.
    """

    def __init__(self, file, request, transport, start, end, growing=None):
        self._file = file
        self._request = request
        self._transport = transport
        self._position = start
        self._end = end
        self._growing = growing
        self._buffer = None  # made on the first read from the file
        self._unsent = b""  # read from the file at _position, not yet sent
        self._done = Deferred(lambda d: self._close(Failure(ConnectionLost("the client went away"))))
        self._waiting = False  # caught up with a growing blob, until wake()

    position = FileStreamer.position

    def start(self):
        # The headers and the first bytes of the body go in separate writes:
        # don't let Nagle hold the body back for the client's delayed ACK.
        self._transport.setTcpNoDelay(True)
        self._request.write(b"")  # the headers, into the transport's buffer
        self._transport.doWrite = self._do_write
        self._send_now()
        return self._done

    def wake(self):
        if self._waiting and not self._done.called:
            self._waiting = False
            self._send_now()

    def fail(self, reason):
        self._close(Failure(StreamBroken(reason)))

    def _send_now(self):
        """
        Send what the socket takes without waiting for the reactor; a
        socket that fails here is dropped as the reactor would drop it.
        """
        if self._do_write() is not None:
            self._transport.abortConnection()

    def _do_write(self):
        transport = self._transport
        if transport.dataBuffer or transport._tempDataBuffer:
            # The headers first, by Twisted's own means (which stops writing
            # once its buffer is empty).
            result = type(transport).doWrite(transport)
            if result is not None or self._done.called:
                return result
            if transport.dataBuffer or transport._tempDataBuffer:
                transport.startWriting()
                return None
        for _ in range(SENDS_PER_WAKEUP):
            if self._position >= self._end:
                self._finish()
                return None
            data = self._unsent or self._next_data()
            if data is None:
                return None
            try:
                sent = transport.socket.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                self._close(Failure(ConnectionLost(str(e))))
                return ConnectionLost(str(e))
            self._position += sent
            self._request.sentLength += sent
            if self._unsent:
                self._unsent = self._unsent[sent:]
            if sent < len(data):
                break  # the socket is full
        transport.startWriting()  # call again when it has room, or after the others had a turn
        return None

    def _next_data(self):
        """
        The next bytes to send, from memory or read from the file (kept in
        C{_unsent} until sent); None if there are none yet or the file
        failed, which has been dealt with.
        """
        data, limit = _next_piece(self._growing, self._position, self._end)
        if data is not None:
            return data
        if self._position >= limit:
            # caught up with a growing blob: wait for wake()
            self._waiting = True
            self._transport.stopWriting()
            return None
        if self._buffer is None:
            self._buffer = memoryview(bytearray(READ_CHUNK))
        want = self._buffer[:min(READ_CHUNK, limit - self._position)]
        try:
            got = os.preadv(self._file.fileno(), [want], self._position)
        except OSError as e:
            self.fail(f"reading failed: {e}")
            return None
        if got == 0:
            self.fail("the file ended early")
            return None
        self._unsent = want[:got]
        return self._unsent

    def _release(self):
        """
        Give the transport its own doWrite back.
        """
        self._waiting = False
        if self._transport.__dict__.get("doWrite") is not None:
            del self._transport.doWrite
        if not (self._transport.dataBuffer or self._transport._tempDataBuffer):
            self._transport.stopWriting()
        self._file.close()

    def _finish(self):
        self._release()
        self._done.callback(None)

    def _close(self, failure):
        if self._done.called:
            return
        self._release()
        self._done.errback(failure)
