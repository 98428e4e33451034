"""
Many callers, one operation: the first caller for a key starts it, the others
wait for its result.
"""

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class SingleFlight:
    """
    Run at most one operation per key at a time and share its outcome.

    Each caller gets a Deferred of its own: a caller that gives up (its
    client went away, so Klein cancels its Deferred) does not cancel the
    operation for the others.
    """

    def __init__(self):
        self._waiters = {}

    def run(self, key, operation):
        """
        Start C{operation()} (a coroutine function) unless it is already
        running for C{key}; return a Deferred of its result.
        """
        mine = Deferred()
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.append(mine)
            return mine
        self._waiters[key] = [mine]
        Deferred.fromCoroutine(operation()).addBoth(self._finished, key)
        return mine

    def _finished(self, result, key):
        for waiter in self._waiters.pop(key):
            if waiter.called:
                continue  # cancelled by a caller that left
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        return None
