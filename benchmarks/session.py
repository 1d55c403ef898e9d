"""One time-boxed GPU session: a single priority queue of measurements, several at once, rows to one JSON Lines file.

Everything the card can tell in one call of a few minutes, in the order that makes a cut-short run
most useful: a canary alone (which is also the isolation case's "alone" half), the max-context
searches (serial chains, started first), the open questions, then calibration and held-out accuracy
cases interleaved (the cases that fit the most constants and cover the most methods first).

Several cases run at once (benchmarks.scheduler), each in its own process (benchmarks.harness: a fresh
CUDA context and allocator), whenever their reserved device memory fits together under `fill` of the card
(default 85%); a case's reservation is its predicted device peak x 1.1 + 1 GiB, a budgeted max-context probe
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
import itertools
import json
import os
import sys
from collections.abc import Callable
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
from benchmarks.scheduler import FILL, GIB, Scheduler

ROOT = Path(__file__).resolve().parents[1]

RESERVE_FACTOR, RESERVE_PAD = 1.1, 1 * GIB  # reservation = predicted device peak x 1.1 + 1 GiB
# The allocator setting the runner launches training with (and so the one to calibrate).
SESSION_ENV = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}


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
