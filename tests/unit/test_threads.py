"""
The writers' thread pool: every job runs at once in a thread of its own
(a writer's two loops wait on each other's progress), and idle threads are
reused rather than started anew.
"""

import threading
import time

from daomirror.storage.threads import ThreadPool


def wait_for(condition, timeout=5):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_jobs_run_side_by_side():
    pool = ThreadPool()
    first_running, second_ran = threading.Event(), threading.Event()
    finished = []
    pool.run(lambda: (first_running.set(), finished.append(second_ran.wait(5))), "first")
    first_running.wait(5)
    pool.run(second_ran.set, "second")
    wait_for(lambda: finished)
    assert finished == [True], "the second job ran while the first was still running"


def test_an_idle_thread_takes_the_next_job_under_its_name():
    pool = ThreadPool(keep_idle=1)
    threads = []

    def job():
        threads.append((threading.current_thread(), threading.current_thread().name))

    pool.run(job, "one")
    wait_for(lambda: pool._idle == 1)
    pool.run(job, "two")
    wait_for(lambda: len(threads) == 2)
    assert threads[0][0] is threads[1][0]
    assert [name for _, name in threads] == ["one", "two"]


def test_no_more_than_keep_idle_threads_stay():
    pool = ThreadPool(keep_idle=1)
    release = threading.Event()
    workers = []

    def job():
        workers.append(threading.current_thread())
        release.wait(5)

    pool.run(job, "a")
    pool.run(job, "b")
    wait_for(lambda: len(workers) == 2)
    release.set()
    wait_for(lambda: not all(w.is_alive() for w in workers))
    time.sleep(0.05)
    assert sum(w.is_alive() for w in workers) == 1
    assert pool._idle == 1



def test_prestarted_threads_take_the_first_jobs():
    pool = ThreadPool(keep_idle=4)
    pool.prestart(2)
    pool.prestart(2)  # already there: none more
    wait_for(lambda: pool._idle == 2)
    waiting = set(threading.enumerate())
    ran, release = [], threading.Event()
    for name in ("hash", "store"):
        pool.run(lambda: (ran.append(threading.current_thread()), release.wait(5)), name)
    wait_for(lambda: len(ran) == 2)
    release.set()
    assert all(thread in waiting for thread in ran), "no thread was started for them"
    assert sorted(thread.name for thread in ran) == ["hash", "store"]
