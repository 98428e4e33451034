"""
A fill on its own, with a memory storage, a fake clock and in-memory
consumers: the invariants that matter most are decided here, so they are
tested without sockets or timing.
"""

import errno
import hashlib

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed

from daomirror import fill as fill_module
from daomirror.fill import Fill, FillFailed, RecentBytes
from daomirror.reference import Digest
from daomirror.storage.memory import MemoryStorage
from daomirror.streaming import StreamBroken

DATA = bytes(range(256)) * 4096  # 1 MiB
DIGEST = Digest("sha256", hashlib.sha256(DATA).hexdigest())


class FakeResponse:
    """
    Stands in for an upstream response: the test feeds its body by hand.
    """

    def __init__(self):
        self.transport = StringTransport()

    def deliverBody(self, protocol):
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def send(self, data):
        self.protocol.dataReceived(data)

    def end(self, reason=None):
        self.protocol.connectionLost(Failure(reason or ResponseDone()))


def start_fill(size=len(DATA), clock=None, writer=None):
    storage = MemoryStorage()
    clock = clock or Clock()
    writer = writer or storage.open_writer("blobs/x", DIGEST)
    fill = Fill(DIGEST, size, writer, clock, idle_timeout=30)
    response = FakeResponse()
    fill.start(response)
    return storage, fill, response, clock


def drain(consumer):
    """
    Let a consumer's streaming producer run until it has nothing more to give.
    """
    if consumer.producer is not None:
        consumer.producer.resumeProducing()
    return consumer.value()


def failure_of(d):
    failures = []
    d.addErrback(failures.append)
    return failures[0] if failures else None


def test_readers_follow_the_transfer_but_get_the_last_byte_only_after_verification():
    storage, fill, response, _ = start_fill()
    client = StringTransport()
    done = fill.attach(client, 0, len(DATA))
    response.send(DATA[:1000])
    assert drain(client) == DATA[:1000]
    response.send(DATA[1000:])
    assert drain(client) == DATA[:-1], "the last byte waits for the digest check"
    assert not done.called
    response.end()
    assert drain(client) == DATA
    assert done.called and failure_of(done) is None
    assert storage.objects["blobs/x"] == DATA
    assert fill.done.result is True


def test_a_late_joiner_reads_the_spool_then_follows():
    _, fill, response, _ = start_fill()
    response.send(DATA[:500_000])
    late = StringTransport()
    fill.attach(late, 0, len(DATA))
    assert drain(late) == DATA[:500_000]
    response.send(DATA[500_000:])
    response.end()
    assert drain(late) == DATA


def test_a_paused_reader_does_not_hold_up_the_others_or_the_fill():
    storage, fill, response, _ = start_fill()
    slow, fast = StringTransport(), StringTransport()
    fill.attach(slow, 0, len(DATA))
    fill.attach(fast, 0, len(DATA))
    slow.producer.pauseProducing()
    response.send(DATA)
    response.end()
    assert drain(fast) == DATA
    assert slow.value() == b""
    assert storage.objects["blobs/x"] == DATA
    assert drain(slow) == DATA


@pytest.mark.parametrize("body", [b"X" + DATA[1:], DATA[:-1] + b"X"])
def test_wrong_bytes_abort_every_reader_and_store_nothing(body):
    storage, fill, response, _ = start_fill()
    client = StringTransport()
    done = fill.attach(client, 0, len(DATA))
    response.send(body)
    drain(client)
    response.end()
    assert failure_of(done).check(StreamBroken)
    assert len(client.value()) < len(DATA)
    assert "blobs/x" not in storage.objects
    assert fill.done.result is False
    assert failure_of(fill.attach(StringTransport(), 0, len(DATA))).check(FillFailed)


def test_an_upstream_that_breaks_off_aborts_the_readers():
    storage, fill, response, _ = start_fill()
    client = StringTransport()
    done = fill.attach(client, 0, len(DATA))
    response.send(DATA[:1000])
    response.end(ResponseFailed([Failure(ConnectionLost())]))
    assert failure_of(done).check(StreamBroken)
    assert "blobs/x" not in storage.objects


def test_a_silent_upstream_is_given_up_after_the_idle_timeout():
    _, fill, response, clock = start_fill()
    response.send(DATA[:1000])
    clock.advance(29)
    assert not response.transport.disconnecting and fill.outcome is None
    response.send(DATA[1000:2000])
    clock.advance(29)
    assert fill.outcome is None, "each chunk restarts the idle timer"
    clock.advance(2)
    assert response.transport.disconnecting or response.transport.producerState == "stopped"


def test_a_reader_that_leaves_does_not_stop_the_fill():
    storage, fill, response, _ = start_fill()
    client = StringTransport()
    done = fill.attach(client, 0, len(DATA))
    response.send(DATA[:1000])
    client.producer.stopProducing()
    assert failure_of(done).check(ConnectionLost)
    response.send(DATA[1000:])
    response.end()
    assert storage.objects["blobs/x"] == DATA


def test_unknown_length_is_verified_before_readers_start():
    _, fill, response, _ = start_fill(size=None)
    waited = fill.wait_verified()
    response.send(DATA)
    assert not waited.called
    response.end()
    assert waited.called and fill.size == len(DATA)


def test_readers_at_the_head_are_not_held_back_by_the_disk():
    writer = MemoryStorage().open_writer("blobs/x", DIGEST)
    writer._landed = lambda total: None  # a disk that has stored nothing yet
    _, fill, response, _ = start_fill(writer=writer)
    client = StringTransport()
    fill.attach(client, 0, len(DATA))
    response.send(DATA[:500_000])
    response.send(DATA[500_000:600_000])
    assert writer.bytes_written == 0
    assert drain(client) == DATA[:600_000], "sent from memory"


def test_bytes_stored_long_enough_ago_are_let_go_and_read_from_the_file(monkeypatch):
    monkeypatch.setattr(fill_module, "KEEP_BEHIND", 200_000)
    _, fill, response, _ = start_fill()
    for offset in range(0, 600_000, 100_000):
        response.send(DATA[offset:offset + 100_000])
    assert fill.in_memory(0, len(DATA)) is None
    assert bytes(fill.in_memory(400_000, len(DATA))) == DATA[400_000:500_000]
    late = StringTransport()
    fill.attach(late, 0, len(DATA))
    assert drain(late) == DATA[:600_000]


def test_bytes_a_reader_near_the_head_has_yet_to_send_stay_in_memory(monkeypatch):
    # Stored already, but wanted soon by a client that lags a little: it
    # should not have to read them back from the disk. One that lags too far
    # reads the file instead, and holds no memory.
    monkeypatch.setattr(fill_module, "KEEP_BEHIND", 100_000)
    monkeypatch.setattr(fill_module, "FOLLOW_WINDOW", 300_000)
    _, fill, response, _ = start_fill()
    lagging = StringTransport()
    fill.attach(lagging, 0, len(DATA))
    lagging.producer.pauseProducing()
    for offset in range(0, 300_000, 100_000):
        response.send(DATA[offset:offset + 100_000])
    assert bytes(fill.in_memory(0, len(DATA))) == DATA[:100_000], "the reader is 300,000 bytes behind"
    response.send(DATA[300_000:400_000])
    assert fill.in_memory(0, len(DATA)) is None, "now it is too far behind"
    assert fill.in_memory(200_000, len(DATA)) is None
    assert bytes(fill.in_memory(300_000, len(DATA))) == DATA[300_000:400_000]
    assert drain(lagging) == DATA[:400_000]


def test_recent_bytes_hand_out_whole_chunks_as_they_are_and_parts_as_views():
    recent = RecentBytes()
    first, second = b"a" * 10, b"b" * 10
    recent.add(first)
    recent.add(second)
    assert recent.get(10, 20) is second
    assert bytes(recent.get(5, 20)) == b"a" * 5
    assert bytes(recent.get(12, 15)) == b"b" * 3
    assert recent.get(20, 30) is None, "not arrived yet"
    recent.forget_before(15)
    assert recent.start == 10 and recent.get(9, 20) is None, "the chunk ending at 10 is gone"
    recent.forget_before(20)
    assert recent.start == recent.end == 20 and recent.get(15, 20) is None


def test_a_range_gets_its_last_byte_only_after_verification():
    _, fill, response, _ = start_fill()
    ranged = StringTransport()
    done = fill.attach(ranged, 0, 100)
    response.send(DATA[:500_000])
    assert drain(ranged) == DATA[:99] and not done.called
    response.send(DATA[500_000:])
    response.end()
    assert drain(ranged) == DATA[:100] and done.called and failure_of(done) is None


def test_a_range_of_a_blob_that_turns_out_wrong_never_ends_cleanly():
    _, fill, response, _ = start_fill()
    ranged = StringTransport()
    done = fill.attach(ranged, 0, 100)
    response.send(b"X" + DATA[1:])
    drain(ranged)
    response.end()
    assert failure_of(done).check(StreamBroken)
    assert ranged.value() == b"X" + DATA[1:99]


def test_a_storage_failure_stops_the_upstream_and_the_readers_at_once():
    storage = MemoryStorage()
    writer = storage.open_writer("blobs/x", DIGEST)
    _, fill, response, _ = start_fill(writer=writer)
    client = StringTransport()
    done = fill.attach(client, 0, len(DATA))
    response.send(DATA[:500_000])
    writer._broken(OSError(errno.ENOSPC, "No space left on device"))
    assert failure_of(done).check(StreamBroken)
    assert response.transport.producerState == "stopped", "the upstream is not read any further"
    assert fill.in_memory(400_000, len(DATA)) is None, "nothing is held in memory"
    assert fill.done.result is False and "blobs/x" not in storage.objects
