"""Config quality: is the plan's choice as fast as the best configuration a brute-force grid finds?

For each case (model, method, cutoff, card budget) the grid is every micro batch x checkpointing x
Liger at the same global batch (micro batch x accumulation = 8 sequences); each runs a few optimizer
steps in its own subprocess under the budget (allocator capped as in max_context.py). Configs that
run out of memory do not fit. The plan's choice comes from planner.search with the same pins. Reported:
the plan's throughput as a share of the grid's best (goal >= 95%), and the time each approach took
(the grid's total wall time; the plan's search time plus its one measured run).

    python -m benchmarks.config_quality                        # CUDA, all cases
    python -m benchmarks.config_quality --cases qwen7b-qlora-24g --out-dir $OUT/quality
    python -m benchmarks.config_quality --device cpu --smoke   # tiny model, simulated budget (CI path)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.harness import run_case
from benchmarks.matrix import Case, resolve_model
from benchmarks.report import fmt_abs_pct, gpu_label, md_table
from planner.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

GLOBAL_BATCH = 8
GOAL_SHARE = 0.95


@dataclass(frozen=True)
class QualityCase:
    name: str
    model: str
    pinned: dict[str, Any]  # TrainConfig fields fixed for the grid and the plan alike
    budget_bytes: int  # the card the plan is for (profiles/gpus.yaml memory_bytes)
    micro_batches: tuple[int, ...] = (1, 2, 4, 8)
    liger: tuple[bool, ...] = (False, True)


CASES = (
    QualityCase("qwen7b-qlora-24g", "Qwen2.5-7B", {"finetuning_type": "lora", "quantization_bit": 4, "lora_rank": 16,
                                                  "lora_alpha": 32, "cutoff_len": 2048}, 25757220864),
    QualityCase("llama8b-lora-80g", "Llama-3.1-8B", {"finetuning_type": "lora", "lora_rank": 16, "lora_alpha": 32,
                                                    "cutoff_len": 4096}, 85520809984),
    QualityCase("qwen1.5b-full-40g", "Qwen2.5-1.5B", {"finetuning_type": "full", "dtype": "bf16",
                                                     "cutoff_len": 1024}, 42949672960),
)
SMOKE_CASES = (
    QualityCase("tiny-lora-smoke", "tiny", {"finetuning_type": "lora", "lora_rank": 8, "lora_alpha": 16,
                                            "cutoff_len": 256, "use_liger_kernel": False},
                4_000_000, micro_batches=(1, 2), liger=(False,)),
)


def grid(qc: QualityCase) -> list[Case]:
    out = []
    for mb in qc.micro_batches:
        for ckpt in (True, False):
            for liger in qc.liger:
                train = {**qc.pinned, "per_device_train_batch_size": mb,
                         "gradient_accumulation_steps": max(1, GLOBAL_BATCH // mb),
                         "gradient_checkpointing": ckpt, "use_liger_kernel": liger, "attn_implementation": "sdpa",
                         "optim": "adamw_torch_fused"}
                name = f"q-{qc.name}-b{mb}{'-ckpt' if ckpt else ''}{'-liger' if liger else ''}"
                out.append(Case(name, qc.model, train, steps=3, budget_bytes=qc.budget_bytes, group="quality"))
    return out


def plan_choice(qc: QualityCase, device: str = "cuda") -> tuple[Case | None, float, str]:
    """(the plan's configuration as a Case, seconds the search took, note). On the CPU the budget is
    host memory (no device overheads), as the CPU measurement counts live tensors only."""
    from planner.hardware.gpu_spec import GpuSetup, GpuSpec
    from planner.search import search

    spec = resolve_model(qc.model)
    setup = GpuSetup(gpu=GpuSpec(name=f"{qc.budget_bytes / 2**30:.0f}GB", memory_bytes=qc.budget_bytes,
                                 compute_capability="9.0", vendor="cpu" if device == "cpu" else "nvidia"))
    started = time.perf_counter()
    try:
        plan = search(spec, setup, None, pinned=dict(qc.pinned), target_batch=GLOBAL_BATCH)
    except Exception as e:  # Infeasible or a planner error: reported, not fatal
        return None, time.perf_counter() - started, f"no plan: {type(e).__name__}: {e}"
    took = time.perf_counter() - started
    cfg: TrainConfig = plan.config
    train = {k: v for k, v in cfg.to_json().items() if k != "method"}
    return (Case(f"q-{qc.name}-plan", qc.model, train, steps=3, budget_bytes=qc.budget_bytes, group="quality"),
            took, f"plan: batch {cfg.per_device_train_batch_size} x ga {cfg.gradient_accumulation_steps}, "
            f"checkpointing {cfg.gradient_checkpointing}, liger {cfg.use_liger_kernel}")


def tokens_per_s(result: dict[str, Any]) -> float | None:
    if result.get("status") != "ok":
        return None
    return (result.get("timing") or {}).get("tokens_per_second")


def evaluate(qc: QualityCase, out_dir: Path, *, device: str, timeout_s: float) -> dict[str, Any]:
    started = time.perf_counter()
    rows = []
    for c in grid(qc):
        r = run_case(c, out_dir / f"{c.name}.json", device=device, timeout_s=timeout_s)
        rows.append({"name": c.name, "train": c.train, "status": r.get("status"), "tokens_per_second": tokens_per_s(r),
                     "seconds": (r.get("timing") or {}).get("total_seconds")})
        print(f"  {c.name}: {r.get('status')} {tokens_per_s(r)} tok/s", file=sys.stderr, flush=True)
    grid_seconds = sum(x["seconds"] or 0 for x in rows)
    fitting = [x for x in rows if x["tokens_per_second"]]
    best = max(fitting, key=lambda x: x["tokens_per_second"]) if fitting else None
    plan_case, search_s, note = plan_choice(qc, device)
    plan_row: dict[str, Any] = {"note": note, "search_seconds": round(search_s, 3)}
    if plan_case is not None:
        same = next((c for c in grid(qc) if c.key()[:2] == plan_case.key()[:2]), None)
        target = same or plan_case
        r = run_case(target, out_dir / f"{target.name}.json", device=device, timeout_s=timeout_s)
        plan_row.update({"name": target.name, "train": plan_case.train, "status": r.get("status"),
                         "tokens_per_second": tokens_per_s(r), "in_grid": same is not None,
                         "seconds": round(search_s + ((r.get("timing") or {}).get("total_seconds") or 0), 3)})
    share = (plan_row.get("tokens_per_second") or 0) / best["tokens_per_second"] if best else None
    return {"case": qc.name, "model": qc.model, "pinned": qc.pinned, "budget_bytes": qc.budget_bytes,
            "grid": rows, "grid_fitting": len(fitting), "grid_seconds": round(grid_seconds, 3),
            "best": best, "plan": plan_row, "plan_share_of_best": None if share is None else round(share, 4),
            "goal_met": share is not None and share >= GOAL_SHARE,
            "wall_seconds": round(time.perf_counter() - started, 3)}


def write(results: list[dict[str, Any]], results_dir: Path, label: str) -> None:
    doc = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "global_batch": GLOBAL_BATCH,
           "goal_share": GOAL_SHARE, "cases": results}
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"config-quality-{label}.json").write_text(json.dumps(doc, indent=1) + "\n")
    table = [[r["case"], f"{r['grid_fitting']}/{len(r['grid'])}",
              (r["best"] or {}).get("name", "-"), (r["best"] or {}).get("tokens_per_second", "-"),
              r["plan"].get("name", r["plan"]["note"]), r["plan"].get("tokens_per_second", "-"),
              fmt_abs_pct(r["plan_share_of_best"]), f"{r['grid_seconds']:.0f}", f"{r['plan'].get('seconds', 0):.0f}"]
             for r in results]
    md = (f"# Config quality ({label})\n\nGlobal batch {GLOBAL_BATCH} sequences; goal: plan >= "
          f"{GOAL_SHARE:.0%} of the grid's best.\n\n"
          + md_table(["case", "fitting", "grid best", "tok/s", "plan", "tok/s", "share", "grid s", "plan s"], table))
    (results_dir / f"config-quality-{label}.md").write_text(md)
    print(md, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Plan's choice vs a brute-force grid (throughput).")
    ap.add_argument("--device", choices=("cuda", "cpu"))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--cases", nargs="*", help="case names (default all)")
    ap.add_argument("--out-dir", type=Path)
    ap.add_argument("--results-dir", type=Path)
    ap.add_argument("--timeout-s", type=float, default=240.0)
    args = ap.parse_args(argv)
    from benchmarks.harness import default_device

    device = args.device or default_device()
    cases = [c for c in (SMOKE_CASES if args.smoke else CASES) if not args.cases or c.name in args.cases]
    out_dir = args.out_dir or ROOT / "out" / "benchmarks" / f"quality-{device}"
    results = [evaluate(qc, out_dir, device=device, timeout_s=args.timeout_s) for qc in cases]
    results_dir = args.results_dir or (out_dir if args.smoke else ROOT / "benchmarks" / "results")
    label = "cpu-smoke" if args.smoke else gpu_label(_gpu_name(device))
    write(results, results_dir, label)
    return 0


def _gpu_name(device: str) -> str:
    if device != "cuda":
        return "cpu"
    import torch

    return torch.cuda.get_device_properties(0).name


if __name__ == "__main__":
    sys.exit(main())
