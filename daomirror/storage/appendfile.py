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

C{bytes} (what the network hands in) are copied into that buffer with
C{memmove} through ctypes, which lets go of the GIL: the copy of a network
chunk, like the write, runs beside the reactor and the writer's hashing
thread, not in turn with them. Other buffers are copied by slicing.
"""

import ctypes
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
        anchor = ctypes.c_char.from_buffer(self._buffer)
        self._address = ctypes.addressof(anchor)  # fixed for the mapping's life
        del anchor  # (an export would keep close() from unmapping it)
        self._written = 0  # the buffer's bytes before this are in the file
        self._end = 0  # and those from there to here are gathered, not written
        self.size = 0

    def fileno(self):
        return self._fd

    def append(self, data):
        """
        Add C{data}; whole blocks reach the file when the buffer is full,
        the rest with L{write_blocks} or L{flush}.
        """
        view = memoryview(data).cast("B")
        # The address of a bytes object's contents, for memmove.
        source = ctypes.cast(data, ctypes.c_void_p).value if type(data) is bytes else None
        capacity = len(self._buffer)
        done = 0
        while done < len(view):
            if self._end == capacity:
                self.write_blocks()
                self._compact()
            taken = min(len(view) - done, capacity - self._end)
            if source is not None:
                ctypes.memmove(self._address + self._end, source + done, taken)  # without the GIL
            else:
                self._view[self._end:self._end + taken] = view[done:done + taken]
            self._end += taken
            done += taken

    def write_blocks(self):
        """
        Write what has been appended: the whole blocks with C{O_DIRECT},
        everything with plain writes.
        """
        while True:
            end = self._end - self._end % BLOCK if self._direct else self._end
            if self._written >= end:
                return
            try:
                written = os.write(self._fd, self._view[self._written:end])
            except OSError as e:
                if e.errno != errno.EINVAL or not self._direct:
                    raise
                # Opened with O_DIRECT, yet the filesystem refuses its writes.
                self._buffered()
                continue
            self._written += written
            self.size += written

    def flush(self):
        """
        Write what is left (the last, partial block) through the page cache.
        """
        self.write_blocks()
        if self._direct:
            self._buffered()
            self.write_blocks()

    def close(self):
        fd, self._fd = self._fd, None  # never closed twice: the number may be another file's by then
        try:
            if fd is not None:
                os.close(fd)
        finally:
            self._view.release()
            try:
                self._buffer.close()
            except BufferError:
                pass  # a slice of it is still alive somewhere; it goes with that

    def _compact(self):
        """
        Move the bytes not yet written (less than a block, after a write)
        to the front of the buffer, where the next write starts aligned.
        Call it only once what could be written was.
        """
        remaining = self._end - self._written
        self._buffer.move(0, self._written, remaining)
        self._written, self._end = 0, remaining

    def _buffered(self):
        """
        From here on, plain writes through the page cache.
        """
        self._direct = False
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
