"""
A staging file that a fill appends to, bypassing the page cache where the
filesystem allows it.

Why: on a virtual machine every page-cache page a new file takes can cost
the host a fault, and buffered writes of a fresh blob then crawl at a few
hundred MB/s, well under the network's speed, while the same bytes written
with C{O_DIRECT} go from one reused buffer to the device at its own speed.
Clients of a running fill are fed from memory (L{daomirror.fill}), so
nobody needs those pages until the blob is read again from the cache.

C{O_DIRECT} wants writes that are whole, aligned blocks from an aligned
buffer: bytes are gathered in a page-aligned buffer, the whole blocks are
written, and the remainder waits for more; L{AppendFile.flush} writes the
last partial block through the page cache. A filesystem that refuses
C{O_DIRECT} (tmpfs before Linux 6.6, some FUSE mounts) gets plain buffered
writes.
"""

import errno
import fcntl
import mmap
import os

BLOCK = 4096


class AppendFile:
    """
    A new file, written front to back by one thread.

    @ivar name: its path.
    @ivar size: how many bytes are in the file (readable by others) so far.
    """

    def __init__(self, path, capacity=4 * 1024 * 1024):
        self.name = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags | os.O_DIRECT, 0o644)
            self._direct = True
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._fd = os.open(path, flags, 0o644)
            self._direct = False
        try:
            self._buffer = mmap.mmap(-1, capacity)  # page-aligned, as O_DIRECT wants
        except OSError:
            os.close(self._fd)
            os.unlink(path)
            raise
        self._view = memoryview(self._buffer)
        self._pending = 0  # bytes at the front of the buffer, not written yet
        self.size = 0

    def fileno(self):
        return self._fd

    def append(self, data):
        """
        Add C{data}; whole blocks reach the file now, the rest with a later
        call or with L{flush}.
        """
        data = memoryview(data)
        capacity = len(self._buffer)
        while data and self._direct:
            taken = min(len(data), capacity - self._pending)
            self._view[self._pending:self._pending + taken] = data[:taken]
            self._pending += taken
            data = data[taken:]
            self._write_blocks()
        self._write_all(data)

    def flush(self):
        """
        Write what is left (the last, partial block) through the page cache.
        """
        if self._direct:
            self._buffered()
        self._write_all(self._view[:self._pending])
        self._pending = 0

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._view.release()
        try:
            self._buffer.close()
        except BufferError:
            pass  # a slice of it is still alive somewhere; it goes with that

    def _write_blocks(self):
        whole = self._pending - self._pending % BLOCK
        if not whole:
            return
        try:
            written = os.write(self._fd, self._view[:whole])
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            # Opened with O_DIRECT, yet the filesystem refuses its writes.
            self._buffered()
            self.flush()
            return
        self.size += written
        remaining = self._pending - written
        self._buffer.move(0, written, remaining)
        self._pending = remaining

    def _buffered(self):
        """
        From here on, plain writes through the page cache.
        """
        self._direct = False
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)

    def _write_all(self, view):
        while view:
            written = os.write(self._fd, view)
            self.size += written
            view = view[written:]
