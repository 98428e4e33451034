"""
Backpressure, tested directly and without timing: a storage writer that
falls behind pauses the producer feeding it (the upstream connection) and
resumes it once it has caught up.
"""

import hashlib
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import deferLater
from zope.interface import implementer

from daomirror.reference import Digest
from daomirror.storage.filesystem import HIGH_WATER, FilesystemStorage

CHUNK = b"x" * (1024 * 1024)
COUNT = HIGH_WATER // len(CHUNK) + 4
DIGEST = Digest("sha256", hashlib.sha256(CHUNK * COUNT).hexdigest())


@implementer(IPushProducer)
class RecordingProducer:
    def __init__(self):
        self.events = []

    def pauseProducing(self):
        self.events.append("pause")

    def resumeProducing(self):
        self.events.append("resume")

    def stopProducing(self):
        self.events.append("stop")


class HangingHash:
    """
    A hash whose updates wait until C{going} is set.
    """

    def __init__(self, going):
        self._going = going
        self._hash = hashlib.sha256()

    def update(self, data):
        self._going.wait(30)
        self._hash.update(data)

    def hexdigest(self):
        return self._hash.hexdigest()


@pytest.mark.parametrize("behind", ["disk", "hash"])
@pytest_twisted.ensureDeferred
async def test_a_writer_behind_pauses_its_producer_until_it_catches_up(tmp_path, monkeypatch, behind):
    # The writer hashes and stores in two threads; either one falling
    # behind must stop the upstream, or the other's lead piles up in memory.
    going = threading.Event()
    if behind == "hash":  # before the writer opens: its thread takes a hasher at once
        monkeypatch.setattr(Digest, "hasher", lambda self: HangingHash(going))
    writer = FilesystemStorage(str(tmp_path)).open_writer("blobs/x", DIGEST)
    if behind == "disk":
        store = writer._store_chunk
        writer._store_chunk = lambda chunk: (going.wait(30), store(chunk))
    producer = RecordingProducer()
    writer.registerProducer(producer, True)
    for _ in range(COUNT):
        writer.write(CHUNK)
    assert producer.events == ["pause"], "more than HIGH_WATER bytes wait: the upstream must stop"
    going.set()
    await writer.verify(len(CHUNK) * COUNT)
    assert producer.events == ["pause", "resume"]
    writer.abort()


@pytest_twisted.ensureDeferred
async def test_a_writer_that_keeps_up_never_pauses(tmp_path):
    writer = FilesystemStorage(str(tmp_path)).open_writer("blobs/x", Digest("sha256", hashlib.sha256(CHUNK).hexdigest()))
    producer = RecordingProducer()
    writer.registerProducer(producer, True)
    writer.write(CHUNK)
    await writer.verify(len(CHUNK))
    assert producer.events == []
    writer.abort()



@pytest_twisted.ensureDeferred
async def test_a_pause_made_while_the_hash_counts_its_last_chunk_is_still_undone(tmp_path, monkeypatch):
    # The race: the hashing thread finishes the last chunk queued while the
    # reactor is pausing the upstream, and counts it once the reactor has
    # looked and the storing thread has had its say. No more bytes come to
    # prompt a report, so that count must see the pause and report it.
    going, counting, counted = threading.Event(), threading.Event(), threading.Event()
    monkeypatch.setattr(Digest, "hasher", lambda self: HangingHash(going))
    last = b"y" * (3 * len(CHUNK))  # more than LOW_WATER: the reactor's own look cannot resume
    chunks = [CHUNK] * (HIGH_WATER // len(CHUNK)) + [last]
    writer = FilesystemStorage(str(tmp_path)).open_writer(
        "blobs/x", Digest("sha256", hashlib.sha256(b"".join(chunks)).hexdigest()))
    pause, count = writer._behind, writer._account_hashed

    def pause_once_the_hash_is_counting_the_last_chunk():
        going.set()
        counting.wait(30)
        pause()

    def count_after_the_pause(size):
        if size == len(last):
            counting.set()
            counted.wait(30)
        count(size)

    writer._behind = pause_once_the_hash_is_counting_the_last_chunk
    writer._account_hashed = count_after_the_pause
    producer = RecordingProducer()
    writer.registerProducer(producer, True)
    for chunk in chunks:
        writer.write(chunk)
    assert producer.events == ["pause"]
    while writer._taken < len(b"".join(chunks)):  # the storing thread is through...
        await deferLater(reactor, 0.001, lambda: None)
    await deferLater(reactor, 0.01, lambda: None)  # ...and its report was heard: the hash was behind
    assert producer.events == ["pause"]
    counted.set()
    await deferLater(reactor, 0.1, lambda: None)  # the hashing thread's report arrives
    assert producer.events == ["pause", "resume"]
    writer.abort()
