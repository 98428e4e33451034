"""
Storage in a directory tree on a local filesystem.

Objects are files under C{root} named by their key. Writes go to a staging
file under C{root/_staging} (the same filesystem) and become visible by an
atomic C{rename} only after they are complete, verified and fsync'ed, so a
crash at any point leaves either the whole object or nothing.
"""

import os
import queue
import threading
import uuid

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from ..streaming import stream
from . import threads
from .appendfile import AppendFile
from .interfaces import IStorage, IWriter
from .writer import VerifyingWriter

STAGING = "_staging"


@implementer(IStorage)
class FilesystemStorage:
    def __init__(self, root, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.root = os.path.abspath(root)
        self._staging = os.path.join(self.root, STAGING)
        os.makedirs(self._staging, exist_ok=True)
        threads.writers.prestart(2)  # one writer's hashing and storing threads
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

    def check(self):
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"the storage root {self.root} is gone")
        os.statvfs(self.root)

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
        staging = self._new_staging_file()
        return deferToThread(_write_and_publish, staging, data, target)

    def _new_staging_file(self, opener=lambda path: open(path, "wb")):
        """
        A fresh staging file; the staging folder is made again if someone
        removed it under a running mirror.
        """
        path = os.path.join(self._staging, uuid.uuid4().hex)
        try:
            return opener(path)
        except FileNotFoundError:
            os.makedirs(self._staging, exist_ok=True)
            return opener(path)

    def produce(self, key, consumer, start, end):
        return stream(open(self.path(key), "rb"), consumer, start, end)[1]

    def open_writer(self, key, digest):
        return _FileWriter(self._reactor, self.path(key), self._new_staging_file(_staging_for_blobs), digest)

    def delete(self, key):
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            pass
        return succeed(None)


def _staging_for_blobs(path):
    return AppendFile(path, capacity=WRITE_BUFFER)


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


# The upstream is paused while more than HIGH_WATER bytes wait for the disk
# or the hash, and resumed when fewer than LOW_WATER do: what a transfer
# holds in memory for its writer.
HIGH_WATER = 8 * 1024 * 1024
LOW_WATER = 2 * 1024 * 1024
# The staging file's buffer: the most written in one go.
WRITE_BUFFER = 4 * 1024 * 1024


class _Command:
    """
    An instruction for a writer's thread, with the Deferred that answers it.
    """

    def __init__(self, name):
        self.name = name
        self.done = Deferred()


@implementer(IWriter)
class _FileWriter(VerifyingWriter):
    """
    Hashes and writes in two threads of its own, each taking every chunk in
    order at its own pace: a slow disk never stalls the reactor, and neither
    the hash nor the disk waits for the other. Both let go of the GIL for
    their real work (the sha256 of a chunk; its copy into the staging file's
    buffer and the write), so they run beside the reactor on other cores.
    Readers see bytes once they are in the staging file.
    """

    def __init__(self, reactor, target, staging_file, digest):
        super().__init__(digest)
        self._reactor = reactor
        self._target = target
        self._file = staging_file
        self._staged = staging_file.name
        self._to_hash = queue.SimpleQueue()
        self._to_store = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._handed = 0  # bytes given to the threads (reactor side)
        self._hashed = 0  # bytes the hashing thread is done with (under the lock)
        self._taken = 0  # bytes the storing thread is done with (under the lock)
        self._stored = 0  # bytes in the staging file (under the lock)
        self._report_pending = False
        self._error = None  # the first error met hashing or storing, reported by verify
        self._discarded = False
        name = digest.hex[:12]
        threads.writers.run(self._run_hash, f"hash {name}")
        threads.writers.run(self._run_store, f"store {name}")

    def _append(self, data):
        self._handed += len(data)
        self._to_hash.put(data)
        self._to_store.put(data)
        if self._backlog() > HIGH_WATER:
            self._behind()
            # The hashing thread reports only once it sees the pause: if both
            # threads got through everything before it was set, resume now
            # rather than count on a report still to come.
            if self._backlog() < LOW_WATER:
                self._caught_up()

    def _backlog(self):
        """
        Bytes handed to the threads that the slower of them has not dealt with.
        """
        with self._lock:
            return self._handed - min(self._hashed, self._taken)

    def _finish(self):
        hashed, stored = _Command("finish"), _Command("finish")
        self._to_hash.put(hashed)
        self._to_store.put(stored)
        both = gatherResults([hashed.done, stored.done], consumeErrors=True)
        return both.addCallback(self._stored_or_error)

    def _stored_or_error(self, results):
        if self._error is not None:
            raise self._error
        return tuple(results)

    def _publish(self):
        command = _Command("publish")
        self._to_store.put(command)
        return command.done

    def _discard(self):
        # Gone from sight at once; the threads drop what is still queued and
        # the storing one closes the file.
        self._discarded = True
        _unlink_quietly(self._staged)
        self._to_hash.put(_Command("discard"))
        self._to_store.put(_Command("discard"))

    def _progress(self):
        """
        In the reactor: a thread has moved on; tell readers and the producer.
        """
        with self._lock:
            self._report_pending = False
            stored = self._stored
        if self._error is not None:
            self._broken(self._error)
        if self._backlog() < LOW_WATER:
            self._caught_up()
        self._landed(stored)

    # In the writer's threads:

    def _run_hash(self):
        hasher = self._digest.hasher()
        while True:
            item = self._to_hash.get()
            if isinstance(item, _Command):
                if item.name == "finish":
                    self._reactor.callFromThread(item.done.callback, hasher.hexdigest())
                return
            if not self._discarded and self._error is None:
                try:
                    hasher.update(item)  # without the GIL
                except Exception as e:
                    self._failed(e)
            self._account_hashed(len(item))

    def _run_store(self):
        while True:
            item = self._to_store.get()
            if not isinstance(item, _Command):
                self._store_chunk(item)
                if self._to_store.empty():
                    self._write_blocks()  # nothing more yet: let readers have what is here
                self._account(taken=len(item))
            elif item.name == "finish":
                self._flush()
                self._reactor.callFromThread(item.done.callback, self._stored)
            elif item.name == "publish":
                self._reactor.callFromThread(*self._sync_and_rename(item.done))
                return
            else:  # discard
                try:
                    self._file.close()
                except OSError:
                    pass  # unlinked already: nothing of it can be seen
                return

    def _store_chunk(self, data):
        if self._error is None and not self._discarded:
            try:
                self._file.append(data)
            except Exception as e:  # OSError, or a bug: the blob is not stored either way
                self._failed(e)

    def _write_blocks(self):
        if self._error is None and not self._discarded:
            try:
                self._file.write_blocks()
            except Exception as e:
                self._failed(e)

    def _flush(self):
        """
        The last partial block into the file, before the length is reported.
        """
        if self._error is None:
            try:
                self._file.flush()
            except Exception as e:
                self._failed(e)
        self._account()

    def _failed(self, error):
        # Reported by verify (and to the fill at once); later bytes are only
        # counted. No traceback: it would pin the buffers.
        self._error = error.with_traceback(None)

    def _account(self, taken=0):
        """
        In the storing thread: C{taken} more bytes dealt with; the reactor
        hears of it (readers follow the file).
        """
        with self._lock:
            self._taken += taken
            self._stored = self._file.size
            report = self._report()
        if report:
            self._reactor.callFromThread(self._progress)

    def _account_hashed(self, hashed):
        """
        In the hashing thread: its progress matters to the reactor only to
        resume a paused upstream. The pause is read under the lock, after
        the count: the reactor sets it before it counts again (L{_append}),
        so one of the two sees the other.
        """
        with self._lock:
            self._hashed += hashed
            report = self._paused and self._report()
        if report:
            self._reactor.callFromThread(self._progress)

    def _report(self):
        """
        Under the lock: whether to call the reactor now (not if a call is
        on its way, which will read the counts when it runs).
        """
        report, self._report_pending = not self._report_pending, True
        return report

    def _sync_and_rename(self, done):
        try:
            os.fsync(self._file.fileno())
            self._file.close()
            _publish(self._staged, self._target)
        except OSError as e:
            self._file.close()
            _unlink_quietly(self._staged)
            return done.errback, Failure(e)
        return done.callback, None

    def open_reader(self):
        try:
            return open(self._staged, "rb")
        except FileNotFoundError:
            return open(self._target, "rb")  # committed (renamed into place) meanwhile
