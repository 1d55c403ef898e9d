"""How fast the auto-configurator answers: one search() per scenario, cold (first call in a fresh process,
imports excluded) and warm (median of repeated calls), with the number of memory estimates it needed.
Also the infeasible path (which re-searches to check every suggestion) and a full --sweep.

    python -m benchmarks.search_speed [--repeat 7] [--samples 50000]

Writes benchmarks/results/search-speed.{json,md}. The target is < 200 ms per search.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks" / "results"
TARGET_S = 0.200
MODELS = ("Qwen2.5-0.5B", "Qwen2.5-7B", "Llama-3.1-8B", "Qwen3-8B", "Qwen2.5-32B", "Qwen2.5-72B")
SETUPS = (("RTX4090", 1, 1), ("A100-80G", 1, 1), ("H100", 1, 1), ("H100", 8, 1), ("H100", 8, 2))
INFEASIBLE = ("Qwen2.5-72B", ("RTX4090", 1, 1), {"finetuning_type": "full"})


def make_data(samples: int, seed: int = 0):
    """A log-normal length distribution (median ~400 tokens, p99 ~2.6k), like chat SFT sets."""
    from planner.data.stats import compute_stats

    rng = random.Random(seed)
    lens = [max(8, int(rng.lognormvariate(6.0, 0.8))) for _ in range(samples)]
    total = sum(lens)
    return compute_stats(lens, samples=samples, prompt_tokens=total // 3, response_tokens=total - total // 3,
                         percentile=0.98, context_len=32768, tokenizer_source="synthetic", tokenizer_exact=True)


def _setup(card: str, count: int, nodes: int):
    from planner.hardware.gpu_spec import GpuSetup
    from planner.hardware.gpus import parse_gpu

    return GpuSetup(parse_gpu(card), count=count, nodes=nodes)


def one(model: str, hw: tuple, pinned: dict, samples: int, repeat: int) -> dict:
    """Time search() for one scenario in this process: the first call (cold), then `repeat` more."""
    import planner.data.stats  # noqa: F401  - imports excluded from the timing
    import planner.memory  # noqa: F401
    from planner.errors import Infeasible
    from planner.model.catalog import find_model
    from planner.search import search

    spec, setup, data = find_model(model).spec, _setup(*hw), make_data(samples)
    times, calls, outcome = [], 0, ""
    for _ in range(repeat + 1):
        t = time.perf_counter()
        try:
            plan = search(spec, setup, data, pinned=dict(pinned))
            calls = plan.memory_calls
            c = plan.config
            outcome = (f"{c.method}, cutoff {c.cutoff_len}, {c.per_device_train_batch_size}x"
                       f"{c.gradient_accumulation_steps}, ZeRO-{c.deepspeed_stage}"
                       + ("" if c.gradient_checkpointing else ", no ckpt"))
        except Infeasible as exc:
            outcome = f"infeasible ({len(exc.payload.get('suggestions', []))} checked suggestions)"
        times.append(time.perf_counter() - t)
    return {"model": model, "gpu": f"{hw[1]} x {hw[0]}" + (f" x {hw[2]} nodes" if hw[2] > 1 else ""),
            "pinned": pinned, "cold_s": times[0], "warm_median_s": statistics.median(times[1:]),
            "memory_estimates": calls, "outcome": outcome}


def sweep_time(samples: int) -> dict:
    from planner.model.catalog import find_model
    from planner.search.sweep import sweep

    data = make_data(samples)
    t = time.perf_counter()
    table = sweep(find_model("Qwen2.5-7B").spec, data)
    return {"model": "Qwen2.5-7B", "rows": len(table.rows), "seconds": time.perf_counter() - t}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--samples", type=int, default=50000)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # one scenario in a fresh process
        spec = json.loads(args.child)
        print(json.dumps(one(spec["model"], tuple(spec["hw"]), spec["pinned"], args.samples, args.repeat)))
        return 0
    try:
        import planner.memory  # noqa: F401
        from planner.memory import estimate_memory  # noqa: F401
    except ImportError as exc:
        print(f"planner.memory.estimate_memory is not available ({exc}); nothing to measure.", file=sys.stderr)
        return 2
    cases = [{"model": m, "hw": list(hw), "pinned": {}} for m in MODELS for hw in SETUPS]
    cases.append({"model": INFEASIBLE[0], "hw": list(INFEASIBLE[1]), "pinned": INFEASIBLE[2]})
    rows = []
    for case in cases:
        out = subprocess.run([sys.executable, "-m", "benchmarks.search_speed", "--child", json.dumps(case), "--repeat", str(args.repeat),
                              "--samples", str(args.samples)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return 1
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['model']:>18} {row['gpu']:>22}: cold {row['cold_s'] * 1e3:6.1f} ms, warm "
              f"{row['warm_median_s'] * 1e3:6.1f} ms, {row['memory_estimates']:3d} estimates  {row['outcome']}")
    sw = sweep_time(args.samples)
    feasible = [r for r in rows if not r["outcome"].startswith("infeasible")]
    summary = {
        "target_s": TARGET_S,
        "searches": len(feasible),
        "cold_max_s": max(r["cold_s"] for r in feasible),
        "cold_median_s": statistics.median(r["cold_s"] for r in feasible),
        "warm_max_s": max(r["warm_median_s"] for r in feasible),
        "infeasible_cold_s": rows[-1]["cold_s"],
        "sweep": sw,
        "all_under_target": all(r["cold_s"] < TARGET_S for r in feasible),
    }
    doc = {"benchmark": "search_speed", "command": "python -m benchmarks.search_speed", "samples": args.samples,
           "repeat": args.repeat, "python": platform.python_version(), "machine": platform.machine(),
           "processor": platform.processor() or platform.machine(), "summary": summary, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search-speed.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = ["# Search speed", "",
          f"`python -m benchmarks.search_speed` ({args.samples:,} synthetic samples; Python "
          f"{platform.python_version()}, {platform.machine()}). Cold = first search() in a fresh process "
          f"(imports excluded); warm = median of {args.repeat} more.", "",
          f"Target < {TARGET_S * 1e3:.0f} ms: cold max {summary['cold_max_s'] * 1e3:.1f} ms, median "
          f"{summary['cold_median_s'] * 1e3:.1f} ms over {summary['searches']} feasible searches. "
          f"Infeasible path (re-searches every suggestion): {summary['infeasible_cold_s'] * 1e3:.0f} ms. "
          f"Sweep of {sw['model']} over {sw['rows']} setups: {sw['seconds']:.2f} s.", "",
          "| model | GPUs | cold ms | warm ms | memory estimates | chosen |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['model']} | {r['gpu']} | {r['cold_s'] * 1e3:.1f} | {r['warm_median_s'] * 1e3:.1f} | "
                  f"{r['memory_estimates']} | {r['outcome']} |")
    (RESULTS / "search-speed.md").write_text("\n".join(md) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if summary["all_under_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
