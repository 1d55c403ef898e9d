"""The GPU session's scheduler (benchmarks.scheduler): it never oversubscribes the card, respects `alone` and
the deadline, serves the max-context chains."""

from __future__ import annotations

import io
import random
import time

import pytest

from benchmarks.scheduler import MIN_START_S, Scheduler


def _fake(seconds: float, status: str = "ok"):
    def run(left_s: float):
        time.sleep(seconds)
        return {"config": {"name": "x"}, "status": status}

    return run


@pytest.mark.parametrize("seed", range(4))
def test_scheduler_never_oversubscribes(seed):
    rng = random.Random(seed)
    sched = Scheduler(100, fill=0.85, max_parallel=5, deadline_s=600, log=io.StringIO())
    for i in range(30):
        alone = rng.random() < 0.1
        sched.submit(f"j{i}", rng.randint(5, 60), _fake(rng.uniform(0.0, 0.03)), priority=rng.random(), alone=alone)
    sched.submit("huge", 95, _fake(0.01), priority=0.5)  # bigger than 85%: runs alone, never beside others
    results = sched.run()
    assert len(results) == 31 and all(r["status"] == "ok" for r in results)
    assert sched.schedule, "nothing ran"
    for e in sched.schedule:
        assert len(e["running"]) <= 5
        if e["alone"]:
            assert e["running"] == [e["name"]], e
        else:
            assert e["reserved_after_bytes"] <= sched.limit_bytes == 85, e
    by_name = {r["session"]["priority"]: r for r in results}
    assert by_name  # every result carries its session record
    huge = next(r for r in results if r["session"]["reserve_bytes"] == 95)
    assert huge["session"]["alone"] and huge["session"]["neighbours"] == []


def test_priority_order_when_one_at_a_time():
    sched = Scheduler(100, max_parallel=1, deadline_s=600, log=io.StringIO())
    for i, p in enumerate([3, 1, 2]):
        sched.submit(f"p{p}", 10, _fake(0.0), priority=p + i * 0)
    sched.run()
    assert [e["name"] for e in sched.schedule] == ["p1", "p2", "p3"]


def test_deadline_stops_new_starts():
    clock_start = time.monotonic()
    sched = Scheduler(100, max_parallel=1, deadline_s=MIN_START_S + 0.3, log=io.StringIO())
    for i in range(20):
        sched.submit(f"j{i}", 10, _fake(0.1), priority=i)
    results = sched.run()
    ran = [r for r in results if r["status"] == "ok"]
    assert 1 <= len(ran) < 20
    assert all(e["start_s"] <= 0.3 + 0.2 for e in sched.schedule)
    assert time.monotonic() - clock_start < 5


def test_submitter_chain_waits_for_each_probe():
    sched = Scheduler(100, max_parallel=3, deadline_s=600, log=io.StringIO())
    seen = []

    def chain(s: Scheduler) -> None:
        for n in (1, 2, 3):
            job = s.submit(f"probe{n}", 50, _fake(0.01, "ok" if n < 3 else "oom"), priority=0)
            seen.append(s.wait(job)["status"])

    sched.submitter(chain)
    for i in range(4):
        sched.submit(f"case{i}", 30, _fake(0.02), priority=10 + i)
    sched.run()
    assert seen == ["ok", "ok", "oom"]
    assert {e["name"] for e in sched.schedule} >= {"probe1", "probe2", "probe3", "case0", "case3"}
