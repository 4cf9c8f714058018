"""The judge pool on its own: ordered completion on the caller's thread, bounded concurrency and backlog,
the rate limiter's exact spacing, errors handed back, inline mode, per-backend settings."""

from __future__ import annotations

import threading
import time

import pytest

from esr_local.errors import UserInputError
from esr_local.runs.judge_pool import JudgePool, RateLimiter, pool_settings


class Gate:
    """Calls that block until released, counting how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.started: list[str] = []
        self.events: dict[str, threading.Event] = {}

    def call(self, name: str, value=None):
        ev = self.events.setdefault(name, threading.Event())

        def run():
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
                self.started.append(name)
            assert ev.wait(10), f"{name} never released"
            with self.lock:
                self.running -= 1
            return value if value is not None else name
        return run

    def release(self, name: str) -> None:
        self.events.setdefault(name, threading.Event()).set()

    def wait_started(self, n: int) -> None:
        end = time.monotonic() + 10
        while len(self.started) < n:
            assert time.monotonic() < end, self.started
            time.sleep(0.005)


def test_groups_complete_in_submission_order_on_the_callers_thread():
    g = Gate()
    done: list[tuple[list, str]] = []
    me = threading.current_thread().name
    with JudgePool(workers=4) as pool:
        pool.submit_group([g.call("a1"), g.call("a2")], lambda r: done.append((r, threading.current_thread().name)))
        pool.submit_group([g.call("b1")], lambda r: done.append((r, threading.current_thread().name)))
        pool.submit_group([], lambda r: done.append((r, threading.current_thread().name)))
        g.wait_started(3)
        assert g.peak == 3  # all three calls in flight together
        g.release("b1")  # the second group finishes first ...
        time.sleep(0.05)
        assert pool.poll() == 0 and done == []  # ... but must wait for the first
        g.release("a2")
        time.sleep(0.05)
        assert pool.poll() == 0 and done == []  # a group completes only when all its calls have
        g.release("a1")
        pool.drain()
    assert done == [(["a1", "a2"], me), (["b1"], me), ([], me)]
    assert pool.pending() == 0


def test_concurrency_is_bounded_by_the_workers():
    g = Gate()
    results = []
    with JudgePool(workers=2, backlog=100) as pool:
        pool.submit_group([g.call(f"c{i}", i) for i in range(5)], results.append)
        g.wait_started(2)
        time.sleep(0.1)
        assert sorted(g.started) == ["c0", "c1"]
        for i in range(5):
            g.release(f"c{i}")
        pool.drain()
    assert g.peak == 2
    assert results == [[0, 1, 2, 3, 4]]  # results keep the calls' order


def test_submit_waits_and_commits_the_oldest_group_when_the_backlog_is_full():
    g = Gate()
    done = []
    pool = JudgePool(workers=1, backlog=2)
    pool.submit_group([g.call("x1"), g.call("x2")], lambda r: done.append("x"))
    blocked = threading.Event()

    def submit_more():
        pool.submit_group([g.call("y1")], lambda r: done.append("y"))
        blocked.set()

    t = threading.Thread(target=submit_more)
    t.start()
    time.sleep(0.1)
    assert not blocked.is_set()  # 2 calls queued: the third must wait
    g.release("x1")
    g.release("x2")
    assert blocked.wait(5)
    assert done == ["x"]  # the waiting submit stored the oldest group first
    g.release("y1")
    t.join()
    pool.drain()
    assert done == ["x", "y"]
    pool.close()


def test_inline_pool_runs_calls_at_submission_in_this_thread():
    seen = []
    me = threading.get_ident()
    pool = JudgePool(workers=0)
    assert pool.inline
    pool.submit_group([lambda: threading.get_ident(), lambda: 7], seen.append)
    assert seen == [[me, 7]]  # already stored when submit returns: no overlap, no extra thread
    pool.drain()
    assert seen == [[me, 7]]


def test_an_exception_in_a_call_is_raised_by_poll_in_order():
    def boom():
        raise ValueError("bug in a judge")

    done = []
    with JudgePool(workers=2) as pool:
        pool.submit_group([lambda: 1], done.append)
        pool.submit_group([boom, lambda: 2], done.append)
        pool.submit_group([lambda: 3], done.append)
        with pytest.raises(ValueError, match="bug in a judge"):
            pool.drain()
        assert done == [[1]]  # the group before the failing one was stored
        pool.drain()
    assert done == [[1], [3]]


def test_rate_limiter_spaces_starts_exactly():
    now = [100.0]
    slept = []

    def sleep(s):
        slept.append(round(s, 9))
        now[0] += s

    rl = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        rl.acquire()
    assert slept == [0.25, 0.25]  # first start at once, then every 1/4 s
    now[0] += 1.0  # idle for a second: no burst credit is kept beyond the next slot
    rl.acquire()
    rl.acquire()
    assert slept == [0.25, 0.25, 0.25]
    free = RateLimiter(None, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        free.acquire()
    assert len(slept) == 3


def test_rate_limit_applies_across_worker_threads():
    waits = []
    lock = threading.Lock()

    def sleep(s):  # a frozen clock: every wait is exactly the slot's distance from "now"
        with lock:
            waits.append(round(s, 9))

    limiter = RateLimiter(20.0, clock=lambda: 0.0, sleep=sleep)
    with JudgePool(workers=4, limiter=limiter) as pool:
        pool.submit_group([lambda: None] * 6, lambda r: None)
        pool.drain()
    # 6 starts from 4 threads took the slots 0, 1/20, ..., 5/20 s: one each, none shared
    assert sorted(waits) == [0.05, 0.1, 0.15, 0.2, 0.25]


def test_settings_per_backend_and_overrides(monkeypatch):
    monkeypatch.delenv("ESR_LOCAL_JUDGE_WORKERS", raising=False)
    monkeypatch.delenv("ESR_LOCAL_JUDGE_RATE", raising=False)
    assert (pool_settings("offline").workers, pool_settings("local").workers) == (0, 0)
    a = pool_settings("anthropic")
    assert (a.workers, a.rate) == (8, 3.0)
    o = pool_settings("openai")
    assert (o.workers, o.rate) == (8, None)
    monkeypatch.setenv("ESR_LOCAL_JUDGE_WORKERS", "2")
    monkeypatch.setenv("ESR_LOCAL_JUDGE_RATE", "0")
    a = pool_settings("anthropic")
    assert (a.workers, a.rate) == (2, None)
    assert pool_settings("offline").workers == 0  # in-process judges stay inline whatever the environment
    monkeypatch.setenv("ESR_LOCAL_JUDGE_WORKERS", "many")
    with pytest.raises(UserInputError, match="ESR_LOCAL_JUDGE_WORKERS='many' is not valid"):
        pool_settings("openai")
    monkeypatch.setenv("ESR_LOCAL_JUDGE_WORKERS", "1")
    monkeypatch.setenv("ESR_LOCAL_JUDGE_RATE", "-1")
    with pytest.raises(UserInputError, match="ESR_LOCAL_JUDGE_RATE='-1'"):
        pool_settings("openai")


def test_closed_pool_refuses_work():
    pool = JudgePool(workers=1)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit_group([lambda: 1], lambda r: None)
