"""One time-boxed GPU session: a single priority queue of measurements, several at once, rows to one JSON Lines file.

Everything the card can tell in one call of a few minutes, in the order that makes a cut-short run
most useful: a canary alone (which is also the isolation case's "alone" half), the max-context
searches (serial chains, started first), the open questions, then calibration and held-out accuracy
cases interleaved (the cases that fit the most constants and cover the most methods first).

Several cases run at once, each in its own process (benchmarks/harness.py: a fresh CUDA context and
allocator), whenever their reserved device memory fits together under `fill` of the card (default
85%); a case's reservation is its predicted device peak x 1.1 + 1 GiB, a budgeted max-context probe
reserves its whole budget. Each process reports its own device memory from NVML's per-process list,
so neighbours do not leak into its figures; the isolation case is measured alone and again beside
others to show it.

    python -m benchmarks.session --device cuda --deadline-s 470 --out-dir $OUT          # the GPU call
    python -m benchmarks.session --device cpu --smoke --card-gib 2 --out-dir /tmp/s     # the same on the CPU
    python -m benchmarks.session --analyse $OUT/rows.jsonl                              # reports, here

Writes rows.jsonl (one harness result per line, with a `session` object: start/end seconds,
reservation, neighbours) and session.json (card, stack, the schedule: every start with the reserved
sum at that moment). --analyse fits the calibration and writes the accuracy, max-context, question
and isolation reports (benchmarks/results, profiles/calibration).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.matrix import (
    ACCURACY,
    CALIBRATION,
    ISOLATION,
    QUESTIONS,
    SMOKE_ACCURACY,
    SMOKE_CALIBRATION,
    Case,
    case,
)

ROOT = Path(__file__).resolve().parents[1]

GIB = 1 << 30
FILL = 0.85  # never reserve more than this share of the card for running cases together
RESERVE_FACTOR, RESERVE_PAD = 1.1, 1 * GIB  # reservation = predicted device peak x 1.1 + 1 GiB
# The allocator setting the runner launches training with (and so the one to calibrate).
SESSION_ENV = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}
MIN_START_S = 35.0  # no new case with less time than this left before the deadline
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


# -- the queue ------------------------------------------------------------------------------------------------
def reserve_for(c: Case, *, device: str) -> int:
    """Device memory to set aside while `c` runs: its whole budget, else the predicted peak x 1.1 + 1 GiB."""
    if c.budget_bytes:
        return int(c.budget_bytes)
    from benchmarks.predict import predict_tensors

    pred = predict_tensors(c, predictor="analytic", device=device)
    if not pred:
        return 16 * GIB if device == "cuda" else 256 << 20
    peak = max(pred.get("peak_bytes") or 0, pred["peak_tensor_bytes"])
    spec, train = c.spec(), c.train_config()
    if device == "cuda" and c.recipe == "peft" and train.quantization_bit and spec.num_kv_heads < spec.num_heads:
        # measured on an H200 (benchmarks/results/gpu-session-*.md): fp32 q/k/v after peft's upcast with
        # grouped-query heads fall back to the math kernel; set aside one layer's fp32 attention matrices
        peak += 4 * spec.num_heads * train.cutoff_len ** 2 * train.per_device_train_batch_size * 4
    return int(peak * RESERVE_FACTOR + (RESERVE_PAD if device == "cuda" else 0))


def case_job(c: Case, out_dir: Path, *, device: str, timeout_s: float, env: dict[str, str]
             ) -> Callable[[float], dict[str, Any]]:
    from benchmarks.harness import run_case

    def run(left_s: float) -> dict[str, Any]:
        child_env = {**env, **c.env}
        return run_case(c, out_dir / f"{c.name}.json", device=device, timeout_s=min(timeout_s, left_s),
                        env=child_env, resume=False)

    return run


def script_job(module: str, name: str, out_dir: Path, *, device: str, env: dict[str, str]
               ) -> Callable[[float], dict[str, Any]]:
    """A benchmark module (run as `python -m module`) that writes one result with --out (the questions)."""
    import subprocess

    def run(left_s: float) -> dict[str, Any]:
        out = out_dir / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        child = {**os.environ, **env,
                 "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        try:
            proc = subprocess.run([sys.executable, "-m", module, "--out", str(out),
                                   "--device", device], env=child, capture_output=True, text=True,
                                  timeout=min(120.0, left_s))
            tail = (proc.stderr or "")[-1500:]
        except subprocess.TimeoutExpired:
            tail = "timeout"
        if out.is_file():
            return json.loads(out.read_text())
        return {"config": {"name": name, "group": "questions"}, "status": "crashed", "error": tail}

    return run


def interleave(*seqs: tuple[Case, ...]) -> list[Case]:
    out: list[Case] = []
    for group in itertools.zip_longest(*seqs):
        out += [c for c in group if c is not None]
    return out


def ordered_cases(*, smoke: bool) -> list[tuple[Case, str]]:
    """(case, its raw-results folder) in priority order, after the isolation case and the searches."""
    if smoke:
        return [(c, "calibration") for c in SMOKE_CALIBRATION] + [(c, "accuracy") for c in SMOKE_ACCURACY]
    head = list(CALIBRATION[:6])  # every method, ckpt on/off, eager: the constants first
    rest = interleave(CALIBRATION[6:], ACCURACY)
    folder = {c.name: ("calibration" if c in CALIBRATION else "accuracy") for c in CALIBRATION + ACCURACY}
    out = [(c, "calibration") for c in head] + [(q, "questions") for q in QUESTIONS]
    out += [(c, folder[c.name]) for c in rest]
    return out


def isolation_pair(*, smoke: bool) -> tuple[Case, Case]:
    base = case("iso", "tiny", "lora", 96, 2, steps=2) if smoke else ISOLATION
    return (base.but(f"{base.name}-alone", group="isolation"), base.but(f"{base.name}-shared", group="isolation"))


def followup_cases() -> list[tuple[Case, str, float]]:
    """A second, shorter call: the held-out set first, then what the first call left (case, folder, priority)."""
    from benchmarks import max_context as mc

    lf = case("q", L8_NAME, "qlora", 8192, 1)
    out = [(lf.but(f"{lf.name}-llamafactory", group="questions", recipe="llamafactory"), "questions", 1.0)]
    out += [(c, "accuracy", 10.0 + i) for i, c in enumerate(ACCURACY)]
    for i, (label, cutoff) in enumerate((("24", 5789), ("80", 28454))):  # Unsloth's figures, LLaMA-Factory's recipe
        p = mc.probe_case(cutoff, label, mc.BUDGETS[label], smoke=False)
        out.append((p.but(f"{p.name}-llamafactory", group="questions", recipe="llamafactory"), "questions",
                    22.0 + i))
    out += [(c, "calibration", 40.0 + i) for i, c in enumerate(CALIBRATION[6:])]
    return out


L8_NAME = "Llama-3.1-8B"


def plan_followup(sched: Scheduler, out_dir: Path, *, device: str, timeout_s: float, env: dict[str, str]) -> None:
    raw = out_dir / "raw"
    sched.submit("q-sdpa-kernels-fp32-gqa", 40 * GIB,
                 script_job("benchmarks.question_sdpa", "q-sdpa-kernels-fp32-gqa", raw / "questions", device=device, env=env),
                 priority=0)
    for c, folder, priority in followup_cases():
        reserve = reserve_for(c, device=device)
        if reserve > sched.limit_bytes:  # would need the card alone: last, so it never drains the card early
            priority += 100
        sched.submit(c.name, reserve, case_job(c, raw / folder, device=device, timeout_s=timeout_s, env=env),
                     priority=priority)


def plan_session(sched: Scheduler, out_dir: Path, *, device: str, smoke: bool, timeout_s: float,
                 env: dict[str, str], budgets: list[str] | None = None) -> None:
    """Queue everything (priorities: lower first)."""
    raw = out_dir / "raw"
    alone, shared = isolation_pair(smoke=smoke)
    sched.submit(alone.name, reserve_for(alone, device=device),
                 case_job(alone, raw / "isolation", device=device, timeout_s=timeout_s, env=env),
                 priority=0, alone=True)
    for lane in max_context_lanes(budgets, smoke=smoke):
        sched.submitter(max_context_chain(lane, raw / "max_context", device=device, smoke=smoke,
                                          timeout_s=timeout_s, env=env, priority=1.0))
    cases = ordered_cases(smoke=smoke)
    # early, so it surely runs, but after a few others have started beside it (in the first H200 call it
    # stood a third of the way down the queue and never started)
    cases.insert(min(3, len(cases)), (shared, "isolation"))
    for i, (c, folder) in enumerate(cases):
        sched.submit(c.name, reserve_for(c, device=device),
                     case_job(c, raw / folder, device=device, timeout_s=timeout_s, env=env), priority=10 + i)
        if not smoke and i == len(QUESTIONS) + 6:
            sched.submit("q-moe-4bit-fused-experts", 4 * GIB,
                         script_job("benchmarks.question_moe_4bit", "q-moe-4bit-fused-experts", raw / "questions",
                                    device=device, env=env), priority=10 + i + 0.5)


def max_context_lanes(budgets: list[str] | None, *, smoke: bool) -> list[list[str]]:
    """The budgets' searches as serial lanes. On an H200 (85% = 119 GiB) the 80 and 40 GB probes do not fit
    together, so 40 follows 80 in one lane while 24 runs beside them; 80 first, its probes are the longest."""
    if budgets is not None:
        return [[b] for b in budgets]
    return [["6m"], ["3m"]] if smoke else [["80", "40"], ["24"]]


def max_context_chain(labels: list[str], out_dir: Path, *, device: str, smoke: bool, timeout_s: float,
                      env: dict[str, str], priority: float) -> Callable[[Scheduler], None]:
    """Binary searches over the cutoff at these budgets, one after the other, each probe a scheduled job
    (benchmarks/max_context.py's search and probe cases)."""
    from benchmarks import max_context as mc

    budgets = mc.SMOKE_BUDGETS if smoke else mc.BUDGETS

    def chain(sched: Scheduler) -> None:
        for label in labels:
            try:
                search(sched, label)
            except RuntimeError as e:  # a failed probe ends this budget's search, not the lane
                print(f"max context {label}: {e}", file=sched.log, flush=True)

    def search(sched: Scheduler, label: str) -> None:
        budget = budgets[label]
        guess = _predicted_cutoff(label, budget, smoke=smoke, device=device) or \
            mc.UNSLOTH_HF_FA2.get(label) or (256 if label == "3m" else 640)
        step = max(16, int(guess * 0.02) // 16 * 16)

        def fits(n: int) -> bool:
            c = mc.probe_case(n, label, budget, smoke=smoke)
            job = sched.submit(c.name, budget, case_job(c, out_dir, device=device, timeout_s=timeout_s, env=env),
                               priority=priority, lane="+".join(labels))
            r = sched.wait(job)
            if r.get("status") not in ("ok", "oom"):
                raise RuntimeError(f"probe {c.name} ended {r.get('status')}")
            return r["status"] == "ok"

        mc.search_max(fits, int(guess * 0.93), int(guess * 1.07), step)

    return chain


def _predicted_cutoff(label: str, budget: int, *, smoke: bool, device: str) -> int | None:
    """The analytic model's largest cutoff at this budget (the search's first guess)."""
    from benchmarks import max_context as mc
    from benchmarks.predict import predict_tensors

    def device_bytes(n: int) -> int | None:
        pred = predict_tensors(mc.probe_case(n, label, budget, smoke=smoke), predictor="analytic",
                               device="cpu" if smoke else device)
        return None if pred is None else max(pred.get("peak_bytes") or 0, pred["peak_tensor_bytes"])

    try:
        return mc.predicted_max(budget, device_bytes)
    except Exception:
        return None


# -- the session -------------------------------------------------------------------------------------------------
def card_bytes_now(device: str, card_gib: float | None) -> tuple[int, dict[str, Any]]:
    """The card's memory without initializing CUDA in this (parent) process: NVML, else --card-gib."""
    if card_gib:
        return int(card_gib * GIB), {"name": f"{device} (given {card_gib} GiB)"}
    from runner.nvml import first_visible_card  # torch-free: no CUDA context in the parent

    card = first_visible_card()
    if card is None:
        raise SystemExit("no NVML device: pass --card-gib to run the scheduler on the CPU")
    return card["memory_bytes"], card


def run_session(args: argparse.Namespace) -> int:
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    card, gpu = card_bytes_now(args.device, args.card_gib)
    env = dict(SESSION_ENV) if args.device == "cuda" else {}
    env.update({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"})
    rows_path = out_dir / "rows.jsonl"
    rows = rows_path.open("w")

    def keep(result: dict[str, Any]) -> None:
        rows.write(json.dumps(result) + "\n")
        rows.flush()

    sched = Scheduler(card, fill=args.fill, max_parallel=args.max_parallel, deadline_s=args.deadline_s,
                      on_result=keep)
    if args.followup:
        plan_followup(sched, out_dir, device=args.device, timeout_s=args.timeout_s, env=env)
    else:
        plan_session(sched, out_dir, device=args.device, smoke=args.smoke, timeout_s=args.timeout_s, env=env,
                     budgets=args.budgets)
    results = sched.run()
    rows.close()
    over = [e for e in sched.schedule if e["reserved_after_bytes"] > sched.limit_bytes and not e["alone"]]
    doc = {"gpu": gpu, "card_bytes": card, "fill": args.fill, "limit_bytes": sched.limit_bytes,
           "deadline_s": args.deadline_s, "elapsed_s": round(sched.elapsed(), 1), "env": env,
           "max_parallel": args.max_parallel, "schedule": sched.schedule, "oversubscribed": over,
           "status_counts": _counts(results)}
    (out_dir / "session.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"session: {len(results)} results {doc['status_counts']} in {doc['elapsed_s']} s -> {rows_path}",
          file=sys.stderr)
    return 0


def _counts(results: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        out[r.get("status", "?")] = out.get(r.get("status", "?"), 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny cases (the CPU code path)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "out" / "gpu-session")
    ap.add_argument("--deadline-s", type=float, default=470.0, help="no case runs past this (seconds from start)")
    ap.add_argument("--timeout-s", type=float, default=150.0, help="per case")
    ap.add_argument("--fill", type=float, default=FILL, help="share of the card reserved at most (default 0.85)")
    ap.add_argument("--max-parallel", type=int, default=8, help="processes at once")
    ap.add_argument("--card-gib", type=float, help="card size for a CPU run of the scheduler")
    ap.add_argument("--budgets", nargs="*", help="max-context budgets (default all; none: skip)")
    ap.add_argument("--followup", action="store_true",
                    help="the second call's queue: held-out set first, then what a first call left")
    ap.add_argument("--analyse", type=Path, nargs="+", metavar="ROWS",
                    help="write the reports from one or more calls' rows.jsonl (each beside its session.json)")
    ap.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if args.analyse:
        from benchmarks.session_report import analyse

        return analyse(args.analyse, results_dir=args.results_dir)
    return run_session(args)


if __name__ == "__main__":
    sys.exit(main())
