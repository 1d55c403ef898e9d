"""The scheduler of a time-boxed GPU session (benchmarks.session): jobs by priority, several at once
while their reserved device memory fits under `fill` of the card, never past the deadline.

A job that does not fit waits; a smaller one behind it may start (backfill) unless the head has waited
too long. `alone` jobs get the card to themselves. A submitter thread may submit jobs and wait for each
(the max-context searches: serial chains whose space is held between probes). Every start is logged
with the reserved sum at that moment (`schedule`), the proof that the card is never oversubscribed.

    >>> sched = Scheduler(card_bytes, fill=0.85, max_parallel=8, deadline_s=470)
    >>> sched.submit("case", reserve_bytes=20 << 30, run=lambda left_s: {...}, priority=1.0)
    >>> results = sched.run()
"""

from __future__ import annotations

import heapq
import itertools
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from planner.units import GIB

FILL = 0.85  # never reserve more than this share of the card for running cases together
MIN_START_S = 35.0  # no new job with less time than this left before the deadline
_PRINT = threading.Lock()


def say(message: str, log) -> None:
    """One whole line on the log, whichever thread speaks."""
    with _PRINT:
        print(message, file=log, flush=True)


@dataclass(order=True)
class Job:
    """One unit of work for the scheduler: run() is called in a worker thread and returns a result."""

    priority: float
    seq: int
    name: str = field(compare=False)
    reserve_bytes: int = field(compare=False)
    run: Callable[[float], dict[str, Any]] = field(compare=False)  # run(seconds left) -> result
    alone: bool = field(default=False, compare=False)
    lane: str | None = field(default=None, compare=False)  # a serial chain: its space is held between jobs
    done: threading.Event = field(default_factory=threading.Event, compare=False)
    result: dict[str, Any] | None = field(default=None, compare=False)


class Scheduler:
    """Start jobs by priority while their reservations fit under fill x card and a process limit.

    A job that does not fit waits; a smaller one behind it may start (backfill) unless the head has
    waited longer than `starve_s`. `alone` jobs start only on an empty card and block others meanwhile.
    Every start is logged with the reserved sum at that moment (`schedule`), the proof that the card
    is never oversubscribed.
    """

    def __init__(self, card_bytes: int, *, fill: float = FILL, max_parallel: int = 6, deadline_s: float = 470.0,
                 starve_s: float = 20.0, clock: Callable[[], float] = time.monotonic, log=sys.stderr,
                 on_result: Callable[[dict[str, Any]], None] | None = None):
        self.limit_bytes = int(card_bytes * fill)
        self.card_bytes, self.fill = card_bytes, fill
        self.max_parallel, self.starve_s, self.clock, self.log = max_parallel, starve_s, clock, log
        self.t0 = clock()
        self.deadline_s = deadline_s
        self._heap: list[Job] = []
        self._seq = itertools.count()
        self._running: dict[str, Job] = {}
        self._cond = threading.Condition()
        self._waiting_since: dict[str, float] = {}
        self.schedule: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self._open_submitters = 0
        self._threads: list[threading.Thread] = []
        self.on_result = on_result  # called with each result as it ends (rows survive a killed session)
        # lane -> (bytes, until): a chain's space stays set aside for a moment after each of its jobs,
        # so the next probe is not crowded out by cases backfilled in between
        self._held: dict[str, tuple[int, float]] = {}
        self._neighbours: dict[str, set[str]] = {}
        self.hold_s = 3.0

    # -- submitting -------------------------------------------------------------------------------------
    def submit(self, name: str, reserve_bytes: int, run: Callable[[float], dict[str, Any]], *, priority: float,
               alone: bool = False, lane: str | None = None) -> Job:
        job = Job(priority, next(self._seq), name, int(reserve_bytes), run, alone, lane)
        if job.reserve_bytes > self.limit_bytes and not alone:
            job.alone = True  # too big to share: it gets the card to itself
        with self._cond:
            self._held.pop(lane, None)  # the chain's next job takes its held space
            heapq.heappush(self._heap, job)
            self._waiting_since[name] = self.elapsed()
            self._cond.notify_all()
        return job

    def submitter(self, fn: Callable[[Scheduler], None]) -> None:
        """Run fn(self) in a thread that may submit jobs and wait for them (a max-context search)."""
        with self._cond:
            self._open_submitters += 1

        def body() -> None:
            try:
                fn(self)
            except Exception as e:  # a broken chain must not stop the session
                print(f"submitter {fn!r} failed: {type(e).__name__}: {e}", file=self.log, flush=True)
            finally:
                with self._cond:
                    self._open_submitters -= 1
                    self._cond.notify_all()

        t = threading.Thread(target=body, daemon=True)
        t.start()

    # -- running ----------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.clock() - self.t0

    def left(self) -> float:
        return self.deadline_s - self.elapsed()

    def reserved(self) -> int:
        now = self.elapsed()
        self._held = {k: v for k, v in self._held.items() if v[1] > now}
        return sum(j.reserve_bytes for j in self._running.values()) + sum(b for b, _ in self._held.values())

    def _pick(self) -> Job | None:
        """The job to start now, or None (called with the lock held)."""
        if not self._heap or len(self._running) >= self.max_parallel:
            return None
        if any(j.alone for j in self._running.values()):
            return None
        head = self._heap[0]
        if head.alone:
            return heapq.heappop(self._heap) if not self._running else None
        free = self.limit_bytes - self.reserved()
        if head.reserve_bytes <= free:
            return heapq.heappop(self._heap)
        if self.elapsed() - self._waiting_since.get(head.name, 0.0) > self.starve_s:
            return None  # let the card drain for the head instead of backfilling forever
        for job in sorted(self._heap)[1:]:
            if not job.alone and job.reserve_bytes <= free:
                self._heap.remove(job)
                heapq.heapify(self._heap)
                return job
        return None

    def _start(self, job: Job) -> None:
        now = self.elapsed()
        self._running[job.name] = job
        entry = {"name": job.name, "start_s": round(now, 2), "reserve_bytes": job.reserve_bytes,
                 "reserved_after_bytes": self.reserved(), "running": sorted(self._running),
                 "limit_bytes": self.limit_bytes, "alone": job.alone}
        self.schedule.append(entry)
        # neighbours, exactly: what runs now, and (added by the later starts) whatever starts before it ends
        self._neighbours[job.name] = set(self._running) - {job.name}
        for other in self._running:
            if other != job.name:
                self._neighbours.setdefault(other, set()).add(job.name)
        say(f"[{now:6.1f}s] start {job.name} (reserve {job.reserve_bytes / GIB:.1f} GiB, "
            f"{entry['reserved_after_bytes'] / GIB:.1f}/{self.limit_bytes / GIB:.1f} GiB, "
            f"{len(self._running)} running)", self.log)

        def body() -> None:
            started = self.elapsed()
            try:
                result = job.run(max(self.left(), 1.0))
            except Exception as e:
                result = {"config": {"name": job.name}, "status": "error", "error": f"{type(e).__name__}: {e}"}
            with self._cond:
                ended = self.elapsed()
                neighbours = self._neighbours.pop(job.name, set())
                result = dict(result)
                result["session"] = {"start_s": round(started, 2), "end_s": round(ended, 2),
                                     "reserve_bytes": job.reserve_bytes, "alone": job.alone,
                                     "neighbours": sorted(neighbours), "priority": job.priority}
                job.result = result
                self.results.append(result)
                if self.on_result is not None:
                    self.on_result(result)
                del self._running[job.name]
                if job.lane is not None:
                    self._held[job.lane] = (job.reserve_bytes, ended + self.hold_s)
                self._cond.notify_all()
            peak = result.get("peak") or {}
            say(f"[{ended:6.1f}s] done  {job.name}: {result.get('status')} device "
                f"{(peak.get('device_bytes') or 0) / GIB:.2f} GiB in {ended - started:.0f} s", self.log)
            job.done.set()

        t = threading.Thread(target=body, daemon=True)
        self._threads.append(t)
        t.start()

    def run(self) -> list[dict[str, Any]]:
        """Until the queue is empty and no submitter is open, or the deadline leaves no time to start."""
        with self._cond:
            while True:
                if self.left() < MIN_START_S:
                    for job in self._heap:  # never started: waiting submitters get a result
                        job.result = {"config": {"name": job.name}, "status": "skipped",
                                      "error": "the session's deadline came first"}
                        job.done.set()
                    self._heap.clear()
                    if not self._running:
                        break
                else:
                    job = self._pick()
                    if job is not None:
                        self._start(job)
                        continue
                    if not self._heap and not self._running and not self._open_submitters:
                        break
                self._cond.wait(timeout=0.5)
        return self.results

    def wait(self, job: Job) -> dict[str, Any]:
        job.done.wait()
        return job.result or {"status": "skipped"}
