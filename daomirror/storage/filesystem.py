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
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from ..streaming import stream
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
        return _FileWriter(self._reactor, self.path(key), self._new_staging_file(_staging_for_batches), digest)

    def delete(self, key):
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            pass
        return succeed(None)


def _staging_for_batches(path):
    return AppendFile(path, capacity=2 * BATCH)


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


# The upstream is paused while more than HIGH_WATER bytes wait for the disk,
# and resumed when fewer than LOW_WATER do: the memory a transfer holds.
HIGH_WATER = 8 * 1024 * 1024
LOW_WATER = 2 * 1024 * 1024
# The most a writer's threads take in one go: they meet, and wait for the
# GIL, once per batch, so a writer that has fallen behind catches up in
# bigger steps. Its staging file's buffer holds a batch and the chunk that
# ends it.
BATCH = 4 * 1024 * 1024


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
    Hashes and writes in threads of its own, so that a slow disk never
    stalls the reactor: one thread takes batches off the queue, gathers each
    in the staging file's buffer (an L{AppendFile}) and hashes it there while
    a second thread writes it. Both let go of the GIL for the whole batch, so
    a batch costs the longer of the two, not their sum, and the threads do
    not queue for the GIL once per network chunk. Readers see bytes once they
    are in the staging file.
    """

    def __init__(self, reactor, target, staging_file, digest):
        super().__init__(digest)
        self._reactor = reactor
        self._target = target
        self._file = staging_file
        self._staged = staging_file.name
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._handed = 0  # bytes given to the thread (reactor side)
        self._taken = 0  # bytes the thread has dealt with (updated under the lock)
        self._stored = 0  # bytes in the staging file (updated under the lock)
        self._report_pending = False
        self._error = None  # the first OSError met storing, reported by verify
        self._discarded = False
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"store {digest.hex[:12]}")
        threading.Thread(target=self._run, name=f"write {digest.hex[:12]}", daemon=True).start()

    def _append(self, data):
        self._handed += len(data)
        self._queue.put(data)
        if self._handed - self._taken > HIGH_WATER:
            self._behind()

    def _finish(self):
        return self._ask("finish").addCallback(self._stored_or_error)

    def _stored_or_error(self, stored):
        if self._error is not None:
            raise self._error
        return stored

    def _publish(self):
        return self._ask("publish")

    def _discard(self):
        # Gone from sight at once; the thread drops what is still queued and
        # closes the file.
        self._discarded = True
        _unlink_quietly(self._staged)
        self._queue.put(_Command("discard"))

    def _ask(self, name):
        command = _Command(name)
        self._queue.put(command)
        return command.done

    def _progress(self):
        """
        In the reactor: the thread has moved on; tell readers and the producer.
        """
        with self._lock:
            self._report_pending = False
            taken, stored = self._taken, self._stored
        if self._error is not None:
            self._broken(self._error)
        if self._handed - taken < LOW_WATER:
            self._caught_up()
        self._landed(stored)

    # In the writer's thread:

    def _run(self):
        hasher = self._digest.hasher()
        waiting = None
        while True:
            item = waiting if waiting is not None else self._queue.get()
            waiting = None
            if not isinstance(item, _Command):
                chunks, size, waiting = self._more(item)
                self._store(hasher, chunks, size)
            elif item.name == "finish":
                self._flush()
                self._reactor.callFromThread(item.done.callback, (hasher.hexdigest(), self._stored))
            elif item.name == "publish":
                self._io.shutdown()
                self._reactor.callFromThread(*self._sync_and_rename(item.done))
                return
            else:  # discard
                self._io.shutdown()
                self._file.close()
                return

    def _more(self, first):
        """
        What is queued behind C{first}, up to BATCH bytes: the two threads
        meet once per batch, rather than per network chunk. Returns the
        chunks, their size and the command met on the way, if any.
        """
        chunks, size = [first], len(first)
        while size < BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Command):
                return chunks, size, item
            chunks.append(item)
            size += len(item)
        return chunks, size, None

    def _store(self, hasher, chunks, size):
        if self._error is None and not self._discarded:
            pieces = deque(memoryview(chunk) for chunk in chunks)
            try:
                while pieces:
                    gathered = self._file.gather(pieces)
                    writing = self._io.submit(self._file.write_gathered)
                    hasher.update(gathered)
                    writing.result()
            except OSError as e:
                # Reported by verify (and to the fill at once); later bytes
                # are only counted. No traceback: it would pin the buffers.
                self._error = e.with_traceback(None)
        self._account(size)

    def _flush(self):
        """
        The last partial block into the file, before the length is reported.
        """
        if self._error is None:
            try:
                self._file.flush()
            except OSError as e:
                self._error = e.with_traceback(None)
        self._account(0)

    def _account(self, taken):
        with self._lock:
            self._taken += taken
            self._stored = self._file.size
            report, self._report_pending = not self._report_pending, True
        if report:
            self._reactor.callFromThread(self._progress)

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
