"""
One behavioural contract, run against every storage driver: what the mirror
relies on (verified, atomic commits; abort leaves nothing; ranged reads with
a producer) must hold whichever driver the configuration names.
"""

import hashlib
import os

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from zope.interface.verify import verifyObject

from daomirror.reference import Digest
from daomirror.storage import DRIVERS, IStorage, IWriter, VerificationFailed, make_storage
from daomirror.storage.filesystem import FilesystemStorage

DATA = os.urandom(3 * 1024 * 1024 + 17)
DIGEST = Digest("sha256", hashlib.sha256(DATA).hexdigest())
KEY = f"blobs/sha256/{DIGEST.hex[:2]}/{DIGEST.hex}"


@pytest.fixture(params=sorted(DRIVERS))
def storage(request, tmp_path):
    options = {"root": str(tmp_path / "root")} if request.param == "filesystem" else {}
    return make_storage(request.param, options)


def test_provides_the_interfaces(storage):
    assert verifyObject(IStorage, storage)
    writer = storage.open_writer(KEY, DIGEST)
    assert verifyObject(IWriter, writer)
    writer.abort()


def test_a_fresh_storage_is_usable(storage):
    storage.check()


def test_filesystem_without_its_root_is_not_usable(tmp_path):
    import shutil

    storage = FilesystemStorage(str(tmp_path / "root"))
    shutil.rmtree(tmp_path / "root")
    with pytest.raises(OSError):
        storage.check()


@pytest_twisted.ensureDeferred
async def test_records_put_get_stat_delete(storage):
    assert await storage.get("repositories/a/_tags/x") is None
    assert await storage.stat("repositories/a/_tags/x") is None
    await storage.put("repositories/a/_tags/x", b"one")
    await storage.put("repositories/a/_tags/x", b"two!")
    assert await storage.get("repositories/a/_tags/x") == b"two!"
    assert await storage.stat("repositories/a/_tags/x") == 4
    await storage.delete("repositories/a/_tags/x")
    await storage.delete("repositories/a/_tags/x")
    assert await storage.get("repositories/a/_tags/x") is None


@pytest_twisted.ensureDeferred
async def test_verified_write_becomes_visible_only_on_commit(storage):
    writer = storage.open_writer(KEY, DIGEST)
    for i in range(0, len(DATA), 100_000):
        writer.write(DATA[i:i + 100_000])
    assert await storage.stat(KEY) is None
    await writer.verify(len(DATA))
    assert await storage.stat(KEY) is None
    await writer.commit()
    assert await storage.stat(KEY) == len(DATA)
    assert await storage.get(KEY) == DATA


@pytest.mark.parametrize("corrupt", ["flip", "short", "long"])
@pytest_twisted.ensureDeferred
async def test_wrong_bytes_are_never_committed(storage, corrupt):
    data = {"flip": b"X" + DATA[1:], "short": DATA[:-1], "long": DATA + b"!"}[corrupt]
    writer = storage.open_writer(KEY, DIGEST)
    writer.write(data)
    with pytest.raises(VerificationFailed):
        await writer.verify(len(DATA))
    with pytest.raises(RuntimeError):
        writer.commit()
    assert await storage.stat(KEY) is None


@pytest_twisted.ensureDeferred
async def test_wrong_length_is_never_committed(storage):
    writer = storage.open_writer(KEY, DIGEST)
    writer.write(DATA)
    with pytest.raises(VerificationFailed):
        await writer.verify(len(DATA) + 1)
    assert await storage.stat(KEY) is None


@pytest_twisted.ensureDeferred
async def test_abort_leaves_nothing(storage):
    writer = storage.open_writer(KEY, DIGEST)
    writer.write(DATA[:1000])
    writer.abort()
    writer.abort()
    assert await storage.stat(KEY) is None


@pytest_twisted.ensureDeferred
async def test_reader_follows_the_writer_and_outlives_commit(storage):
    writer = storage.open_writer(KEY, DIGEST)
    reader = writer.open_reader()
    writer.write(DATA[:100_000])
    # A driver may keep the last partial block back until verify.
    await stored(writer, 100_000 - 100_000 % 4096)
    so_far = reader.read(200_000)
    assert len(so_far) >= 100_000 - 100_000 % 4096 and so_far == DATA[:len(so_far)]
    assert reader.read(200_000) == b""
    writer.write(DATA[100_000:])
    await writer.verify(len(DATA))
    await writer.commit()
    assert reader.read(len(DATA)) == DATA[len(so_far):]
    reader.close()


@pytest_twisted.ensureDeferred
async def test_a_reader_opened_after_commit_reads_the_object(storage):
    writer = storage.open_writer(KEY, DIGEST)
    writer.write(DATA)
    await writer.verify(len(DATA))
    await writer.commit()
    with writer.open_reader() as reader:
        assert reader.read(len(DATA) + 1) == DATA


@pytest.mark.parametrize("start, end", [(0, len(DATA)), (5, 1_000_005), (len(DATA) - 1, len(DATA)), (7, 7)])
@pytest_twisted.ensureDeferred
async def test_produce_writes_the_range_with_a_streaming_producer(storage, start, end):
    writer = storage.open_writer(KEY, DIGEST)
    writer.write(DATA)
    await writer.verify(None)
    await writer.commit()
    consumer = StringTransport()
    done = storage.produce(KEY, consumer, start, end)
    assert consumer.producer is not None or done.called
    assert consumer.streaming or done.called
    while not done.called:
        consumer.producer.resumeProducing()
    await done
    assert consumer.value() == DATA[start:end]
    assert consumer.producer is None


async def stored(writer, size):
    """
    Wait until a writer reports C{size} bytes stored (a driver may store
    them in the background).
    """
    while writer.bytes_written < size:
        await deferLater(reactor, 0.01, lambda: None)


@pytest_twisted.ensureDeferred
async def test_writers_report_progress_to_watchers(storage):
    writer = storage.open_writer(KEY, DIGEST)
    seen = []
    writer.watch(lambda: seen.append(writer.bytes_written))
    writer.write(DATA[:1000])
    writer.write(DATA[1000:])
    await writer.verify(len(DATA))
    assert seen and seen[-1] == len(DATA) and seen == sorted(seen)
    writer.abort()


def test_filesystem_refuses_keys_that_leave_the_root(tmp_path):
    storage = FilesystemStorage(str(tmp_path / "root"))
    for key in ["../etc/passwd", "blobs/../../x", "/etc/passwd", "a//b", "_staging/x", "a/./b"]:
        with pytest.raises(ValueError):
            storage.path(key)


def test_filesystem_drops_unverified_staging_files_on_start(tmp_path):
    root = tmp_path / "root"
    storage = FilesystemStorage(str(root))
    writer = storage.open_writer(KEY, DIGEST)
    writer.write(DATA[:1000])  # a crash now leaves a staging file behind
    assert os.listdir(root / "_staging")
    FilesystemStorage(str(root))
    assert os.listdir(root / "_staging") == []
    assert not (root / "blobs").exists()
