"""
Backpressure, tested directly and without timing: a storage writer that
falls behind pauses the producer feeding it (the upstream connection) and
resumes it once it has caught up.
"""

import hashlib
import threading

import pytest_twisted
from twisted.internet.interfaces import IPushProducer
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


@pytest_twisted.ensureDeferred
async def test_a_writer_behind_pauses_its_producer_until_it_catches_up(tmp_path):
    writer = FilesystemStorage(str(tmp_path)).open_writer("blobs/x", DIGEST)
    disk = threading.Event()
    store = writer._store
    writer._store = lambda *batch: (disk.wait(30), store(*batch))  # a disk that hangs
    producer = RecordingProducer()
    writer.registerProducer(producer, True)
    for _ in range(COUNT):
        writer.write(CHUNK)
    assert producer.events == ["pause"], "more than HIGH_WATER bytes wait: the upstream must stop"
    disk.set()
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
