"""Judging that overlaps generation: judge calls run on a few worker threads while the caller decodes the
next trials, and their results come back to the caller's thread in submission order.

    pool = JudgePool.for_judge(judge)           # workers and rate from the backend (see `pool_settings`)
    pool.submit_group([call1, call2], on_done)  # returns at once (blocks only while the backlog is full)
    ...                                         # decode the next group; submit it
    pool.drain()                                # every on_done has run, in submission order

`on_done(results)` always runs on the thread that calls `submit_group`/`poll`/`drain` (the store's SQLite
connection belongs to it), for one group at a time and in the order the groups were submitted, so the
store sees the same sequence of writes as with serial judging. A call that raises makes the next
`poll`/`drain` raise that exception (judges never raise for judge faults; an exception is a bug).

In-process judges (`offline`, `local`) run llama.cpp on the same cores as generation: overlapping them
with full thread pools oversubscribes the CPU (llama.cpp's spinning threads then crawl), so for them the
pool has no workers and runs each call inline, at submission (`bench/bench_overlap.py` measured inline
against a split of the threads; BENCHMARKS.md has the figures). Remote judges get `DEFAULT_WORKERS`
concurrent requests and, for Anthropic, the paper's 3 requests per second.

Worker threads are daemons: a Ctrl-C leaves in-flight judgments unfinished and unstored, so those
trials run again on resume, exactly as with serial judging.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UserInputError

IN_PROCESS_BACKENDS = frozenset({"offline", "local"})
DEFAULT_WORKERS = 8
#: Requests per second per backend; a backend not listed is not limited.
DEFAULT_RATES: dict[str, float] = {"anthropic": 3.0}
#: At most this many calls (queued or running) per worker before submit_group waits for the oldest group.
BACKLOG_PER_WORKER = 4


class RateLimiter:
    """At most `rate` starts per second, evenly spaced (a start waits until 1/rate after the previous one).
    Thread-safe; `rate` None or <= 0 means no limit."""

    def __init__(self, rate: float | None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._clock, self._sleep = clock, sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Wait for this call's slot."""
        if not self.interval:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            self._sleep(slot - now)


@dataclass(frozen=True)
class PoolSettings:
    """How a run's judge calls are scheduled: `workers` 0 = inline (no overlap)."""

    workers: int
    rate: float | None
    reason: str


def _env_number(name: str, kind: type, low: float) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < low:
        raise UserInputError(f"{name}={raw!r} is not valid; set it to a {'whole ' if kind is int else ''}number "
                             f">= {low:g}, or unset it")
    return value


def pool_settings(backend: str) -> PoolSettings:
    """Workers and rate limit for a judge backend. ESR_LOCAL_JUDGE_WORKERS (0 = inline) and
    ESR_LOCAL_JUDGE_RATE (requests/s, 0 = unlimited) override the defaults for remote judges;
    in-process judges always run inline."""
    if backend in IN_PROCESS_BACKENDS:
        return PoolSettings(0, None, f"the {backend} judge runs in this process on the same cores: inline")
    workers = _env_number("ESR_LOCAL_JUDGE_WORKERS", int, 0)
    rate = _env_number("ESR_LOCAL_JUDGE_RATE", float, 0)
    workers = DEFAULT_WORKERS if workers is None else workers
    rate = DEFAULT_RATES.get(backend) if rate is None else (rate or None)
    return PoolSettings(workers, rate, f"remote judge: {workers} concurrent requests"
                        + (f", at most {rate:g}/s" if rate else ""))


class _Group:
    __slots__ = ("results", "left", "on_done", "error")

    def __init__(self, n: int, on_done: Callable[[list[Any]], None]) -> None:
        self.results: list[Any] = [None] * n
        self.left = n
        self.on_done = on_done
        self.error: BaseException | None = None


class JudgePool:
    """A small bounded thread pool whose groups of calls complete, on the caller's thread, in order."""

    def __init__(self, workers: int = DEFAULT_WORKERS, rate: float | None = None, *,
                 backlog: int | None = None, limiter: RateLimiter | None = None) -> None:
        self.workers = max(0, int(workers))
        self.limiter = limiter or RateLimiter(rate)
        self.backlog = backlog if backlog is not None else max(1, self.workers * BACKLOG_PER_WORKER)
        self._groups: deque[_Group] = deque()
        self._queued = 0  # calls submitted and not yet finished
        self._cond = threading.Condition()
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    @classmethod
    def for_judge(cls, judge) -> JudgePool:
        """A pool with the settings `pool_settings` gives this judge's backend."""
        s = pool_settings(getattr(judge, "backend", "base"))
        return cls(s.workers, s.rate)

    @property
    def inline(self) -> bool:
        return self.workers == 0

    def submit_group(self, calls: Sequence[Callable[[], Any]], on_done: Callable[[list[Any]], None]) -> None:
        """Run `calls` (concurrently when the pool has workers); later, `on_done(results)` in order."""
        if self._closed:
            raise RuntimeError("the judge pool is closed")
        group = _Group(len(calls), on_done)
        if self.inline:
            for i, call in enumerate(calls):
                self.limiter.acquire()
                group.results[i] = call()
            group.left = 0
            with self._cond:
                self._groups.append(group)
            self.poll()
            return
        while True:  # bounded backlog: finish (and commit) the oldest groups first
            with self._cond:
                if self._queued + len(calls) <= self.backlog or not self._groups:
                    break
            self._wait_head()
        self._start_threads()
        with self._cond:
            self._groups.append(group)
            self._queued += len(calls)
        for i, call in enumerate(calls):
            self._tasks.put((group, i, call))
        if not calls:
            self.poll()

    def poll(self) -> int:
        """Run `on_done` for the finished groups at the head of the queue; returns how many ran."""
        ran = 0
        while True:
            with self._cond:
                if not self._groups or self._groups[0].left:
                    return ran
                group = self._groups.popleft()
            if group.error is not None:
                raise group.error
            group.on_done(group.results)
            ran += 1

    def drain(self) -> None:
        """Wait for every submitted group and run their `on_done`s, in order."""
        while True:
            self.poll()
            with self._cond:
                if not self._groups:
                    return
            self._wait_head()

    def pending(self) -> int:
        """Groups submitted whose `on_done` has not run yet."""
        with self._cond:
            return len(self._groups)

    def close(self) -> None:
        """Stop the workers (in-flight calls finish in the background; their results are dropped)."""
        self._closed = True
        for _ in self._threads:
            self._tasks.put(None)
        self._threads = []

    def __enter__(self) -> JudgePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------------

    def _wait_head(self) -> None:
        with self._cond:
            while self._groups and self._groups[0].left:
                self._cond.wait(0.5)
        self.poll()

    def _start_threads(self) -> None:
        while len(self._threads) < self.workers:
            t = threading.Thread(target=self._worker, name=f"esr-judge-{len(self._threads)}", daemon=True)
            t.start()
            self._threads.append(t)

    def _worker(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            group, i, call = task
            result: Any = None
            error: BaseException | None = None
            try:
                self.limiter.acquire()
                result = call()
            except BaseException as exc:  # handed to the caller's thread at poll/drain
                error = exc
            with self._cond:
                group.results[i] = result
                if error is not None and group.error is None:
                    group.error = error
                group.left -= 1
                self._queued -= 1
                self._cond.notify_all()
