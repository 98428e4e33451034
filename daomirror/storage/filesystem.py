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
from .interfaces import IStorage, IWriter
from .writer import VerifyingWriter

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
            _unlink_quietly(os.path.join(self._staging, name))

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
        staging = self._new_staging_file("wb")
        return deferToThread(_write_and_publish, staging, data, target)

    def _new_staging_file(self, mode, **kwargs):
        """
        A fresh staging file; the staging folder is made again if someone
        removed it under a running mirror.
        """
        path = os.path.join(self._staging, uuid.uuid4().hex)
        try:
            return open(path, mode, **kwargs)
        except FileNotFoundError:
            os.makedirs(self._staging, exist_ok=True)
            return open(path, mode, **kwargs)

    def produce(self, key, consumer, start, end):
        return FileStreamer(open(self.path(key), "rb"), consumer, start, end).start()

    def open_writer(self, key, digest):
        return _FileWriter(self.path(key), self._new_staging_file("wb", buffering=0), digest)

    def delete(self, key):
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            pass
        return succeed(None)


def _write_and_publish(staging, data, target):
    try:
        with staging:
            staging.write(data)
            staging.flush()
            os.fsync(staging.fileno())
        _publish(staging.name, target)
    except OSError:
        _unlink_quietly(staging.name)
        raise


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _publish(staged, target):
    """
    Move a complete staging file into place atomically.
    """
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.rename(staged, target)


@implementer(IWriter)
class _FileWriter(VerifyingWriter):
    """
    Writes to a staging file that readers may follow while it grows.
    """

    def __init__(self, target, staging_file, digest):
        super().__init__(digest)
        self._target = target
        self._file = staging_file
        self._staged = staging_file.name

    def _append(self, data):
        view = memoryview(data)
        while view:
            view = view[self._file.write(view):]

    def _publish(self):
        return deferToThread(self._sync_and_rename)

    def _sync_and_rename(self):
        os.fsync(self._file.fileno())
        self._file.close()
        _publish(self._staged, self._target)

    def _discard(self):
        self._file.close()
        _unlink_quietly(self._staged)

    def open_reader(self):
        try:
            return open(self._staged, "rb")
        except FileNotFoundError:
            return open(self._target, "rb")  # committed (renamed into place) meanwhile
