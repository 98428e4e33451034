"""
Threads kept between transfers for the writers' loops.

Why: a filesystem writer runs two loops in threads of their own for as
long as its transfer lasts, and starting two threads costs a cold blob's
first byte about half a millisecond (more on a busy machine). Idle threads
wait here for the next transfer instead. They are daemon threads, unlike
C{concurrent.futures}', so that a writer stuck on a dead disk never holds
the process up at exit.
"""

import queue
import threading

from twisted.logger import Logger

KEEP_IDLE = 8

log = Logger()


class ThreadPool:
    """
    Runs each function given to L{run} in a thread of its own, reusing idle
    threads and keeping at most C{keep_idle} of them.
    """

    def __init__(self, keep_idle=KEEP_IDLE):
        self._jobs = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job and not yet promised one
        self._keep_idle = keep_idle

    def prestart(self, count):
        """
        Start up to C{count} threads that wait for jobs, so that the first
        transfer does not wait for threads to start: on a busy machine a new
        thread can take milliseconds to be scheduled, and C{Thread.start}
        waits for that.
        """
        for _ in range(count):
            with self._lock:
                if self._idle >= min(count, self._keep_idle):
                    return
                self._idle += 1
            threading.Thread(target=self._work, name="idle writer", daemon=True).start()

    def run(self, function, name):
        """
        Call C{function()} in a thread named C{name} now.
        """
        with self._lock:
            reuse = self._idle > 0
            if reuse:
                self._idle -= 1
        self._jobs.put((function, name))
        if not reuse:
            threading.Thread(target=self._work, daemon=True).start()

    def _work(self):
        while True:
            function, name = self._jobs.get()
            threading.current_thread().name = name
            try:
                function()
            except BaseException:
                log.failure("{name} failed", name=name)  # a bug: its writer's callers are not told
            del function  # an idle thread must not keep its last job's objects alive
            threading.current_thread().name = "idle writer"
            with self._lock:
                if self._idle >= self._keep_idle:
                    return
                self._idle += 1


writers = ThreadPool()
