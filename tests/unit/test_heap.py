"""
Freed memory goes back to the system once transfers have stopped for a
moment, not after each one.
"""

from twisted.internet.task import Clock

from daomirror import heap


def quiet_giver(monkeypatch, busy=lambda: False):
    given = []
    monkeypatch.setattr(heap, "give_back", lambda: given.append(True))
    clock = Clock()
    return heap.GiveBackWhenQuiet(clock, busy), clock, given


def test_the_pages_go_back_once_transfers_have_stopped_for_a_while(monkeypatch):
    giver, clock, given = quiet_giver(monkeypatch)
    giver.transfer_ended()
    clock.advance(heap.QUIET_FOR * 0.9)
    giver.transfer_ended()  # a burst: wait on
    clock.advance(heap.QUIET_FOR * 0.9)
    assert given == []
    clock.advance(heap.QUIET_FOR * 0.2)
    assert given == [True]


def test_not_while_a_transfer_is_running(monkeypatch):
    giver, clock, given = quiet_giver(monkeypatch, busy=lambda: True)
    giver.transfer_ended()
    clock.advance(heap.QUIET_FOR * 2)
    assert given == []


def test_not_after_stop(monkeypatch):
    giver, clock, given = quiet_giver(monkeypatch)
    giver.transfer_ended()
    giver.stop()
    clock.advance(heap.QUIET_FOR * 2)
    assert given == []

