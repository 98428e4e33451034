"""
Storage in a directory tree on a local filesystem.

Objects are files under C{root} named by their key. Writes go to a staging
file under C{root/_staging} (the same filesystem) and become visible by an
atomic C{rename} only after they are complete, verified and fsync'ed, so a
crash at any point leaves either the whole object or nothing.
"""

import os
import uuid

from twisted.internet.defer import succeed
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from ..streaming import FileStreamer
from .interfaces import IStorage, IWriter, VerificationFailed

STAGING = "_staging"


@implementer(IStorage)
class FilesystemStorage:
    def __init__(self, root):
        self.root = os.path.abspath(root)
        self._staging = os.path.join(self.root, STAGING)
        os.makedirs(self._staging, exist_ok=True)
        self._discard_stale_staging()

    @classmethod
    def from_options(cls, options):
        return cls(options["root"])

    def _discard_stale_staging(self):
        """
        Staging files left by a crash were never verified: drop them.
        """
        for name in os.listdir(self._staging):
            try:
                os.unlink(os.path.join(self._staging, name))
            except OSError:
                pass

    def path(self, key):
        """
        The file that holds C{key}; refuses anything that could leave the root.
        """
        parts = key.split("/")
        if any(p in ("", ".", "..") or "\0" in p for p in parts) or parts[0] == STAGING:
            raise ValueError(f"invalid storage key {key!r}")
        return os.path.join(self.root, *parts)

    def stat(self, key):
        try:
            return succeed(os.stat(self.path(key)).st_size)
        except FileNotFoundError:
            return succeed(None)

    def get(self, key):
        try:
            with open(self.path(key), "rb") as f:
                return succeed(f.read())
        except FileNotFoundError:
            return succeed(None)

    def put(self, key, data):
        target = self.path(key)
        staged = os.path.join(self._staging, uuid.uuid4().hex)
        with open(staged, "wb") as f:
            f.write(data)
        _publish(staged, target)
        return succeed(None)

    def produce(self, key, consumer, start, end):
        return FileStreamer(open(self.path(key), "rb"), consumer, start, end).start()

    def open_writer(self, key, digest):
        return _FileWriter(self.path(key), os.path.join(self._staging, uuid.uuid4().hex), digest)

    def delete(self, key):
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            pass
        return succeed(None)


def _publish(staged, target):
    """
    Move a complete staging file into place atomically.
    """
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(staged, target)


@implementer(IWriter)
class _FileWriter:
    def __init__(self, target, staged, digest):
        self._target = target
        self._staged = staged
        self._digest = digest
        self._hash = digest.hasher()
        self._file = open(staged, "wb", buffering=0)
        self._state = "writing"
        self.bytes_written = 0

    def write(self, data):
        if self._state != "writing":
            raise RuntimeError(f"write after {self._state}")
        self._hash.update(data)
        view = memoryview(data)
        while view:
            view = view[self._file.write(view):]
        self.bytes_written += len(data)

    def verify(self, size):
        if self._state != "writing":
            raise RuntimeError(f"verify after {self._state}")
        actual = self._hash.hexdigest()
        if actual != self._digest.hex or (size is not None and size != self.bytes_written):
            self.abort()
            raise VerificationFailed(
                f"expected {self._digest} ({size} bytes), got "
                f"{self._digest.algorithm}:{actual} ({self.bytes_written} bytes)"
            )
        self._state = "verified"

    def commit(self):
        if self._state != "verified":
            raise RuntimeError(f"commit while {self._state}")
        self._state = "committing"
        return deferToThread(self._sync_and_publish).addCallback(self._committed)

    def _sync_and_publish(self):
        os.fsync(self._file.fileno())
        self._file.close()
        _publish(self._staged, self._target)

    def _committed(self, _):
        self._state = "committed"

    def abort(self):
        if self._state in ("committed", "committing", "aborted"):
            return
        self._state = "aborted"
        self._file.close()
        try:
            os.unlink(self._staged)
        except FileNotFoundError:
            pass

    def open_reader(self):
        return open(self._staged, "rb")
