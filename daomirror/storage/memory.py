"""
Storage in a dict: for tests, and for trying the mirror without a disk cache.
"""

import io

from twisted.internet.defer import succeed
from zope.interface import implementer

from ..streaming import FileStreamer
from .interfaces import IStorage, IWriter
from .writer import VerifyingWriter


@implementer(IStorage)
class MemoryStorage:
    def __init__(self):
        self.objects = {}

    @classmethod
    def from_options(cls, options):
        return cls()

    def check(self):
        pass

    def stat(self, key):
        data = self.objects.get(key)
        return succeed(None if data is None else len(data))

    def get(self, key):
        return succeed(self.objects.get(key))

    def put(self, key, data):
        self.objects[key] = bytes(data)
        return succeed(None)

    def produce(self, key, consumer, start, end):
        return FileStreamer(io.BytesIO(self.objects[key]), consumer, start, end).start()

    def open_writer(self, key, digest):
        return _MemoryWriter(self.objects, key, digest)

    def delete(self, key):
        self.objects.pop(key, None)
        return succeed(None)


@implementer(IWriter)
class _MemoryWriter(VerifyingWriter):
    def __init__(self, objects, key, digest):
        super().__init__(digest)
        self._objects = objects
        self._key = key
        self._hash = digest.hasher()
        self._buffer = bytearray()

    def _append(self, data):
        self._hash.update(data)
        self._buffer += data
        self._landed(len(self._buffer))

    def _finish(self):
        return self._hash.hexdigest(), len(self._buffer)

    def _publish(self):
        self._objects[self._key] = bytes(self._buffer)

    def _discard(self):
        del self._buffer[:]

    def open_reader(self):
        return _GrowingReader(self._buffer)


class _GrowingReader(io.RawIOBase):
    """
    Reads a bytearray that may still be growing, like a file being appended to.
    """

    def __init__(self, buffer):
        self._buffer = buffer
        self._position = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        self._position = offset if whence == io.SEEK_SET else self._position + offset
        return self._position

    def read(self, n=-1):
        end = len(self._buffer) if n < 0 else self._position + n
        data = bytes(self._buffer[self._position:end])
        self._position += len(data)
        return data
