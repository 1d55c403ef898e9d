"""Largest trainable cutoff: predicted vs measured, against Unsloth's published HF + FA2 figures.

Llama-3.1-8B, QLoRA r=32 on all linear layers, batch 1, gradient checkpointing, at 24/40/80 GB.
Measured by binary search over the cutoff, one subprocess per probe; the card is shrunk to each
budget with torch.cuda.set_per_process_memory_fraction (allocator cap = budget - CUDA context,
applied after a warm-up step; benchmarks/measure_case.py). Predicted by the same search over the
analytic model + the card's calibration.

    python -m benchmarks.max_context                             # CUDA: all budgets
    python -m benchmarks.max_context --budgets 24 40 --out-dir $OUT/ctx --no-report
    python -m benchmarks.max_context --report-only --out-dir DIR
    python -m benchmarks.max_context --device cpu --smoke        # tiny model, simulated OOM (CI path)

Probes are cached per cutoff, so a stopped search continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.harness import run_case
from benchmarks.matrix import Case, case, resolve_model
from benchmarks.predict import PREDICTORS, predict_tensors
from benchmarks.report import fmt_pct, gpu_label, md_table
from planner.hardware.calibration import DeviceOverheads

ROOT = Path(__file__).resolve().parents[1]

# Unsloth's max-context table (unsloth README / blog "Llama 3.1 fine-tuning", Llama-3.1-8B QLoRA r=32,
# batch 1, all linear layers): Hugging Face + Flash Attention 2 column.
UNSLOTH_HF_FA2 = {"24": 5789, "40": 12264, "80": 28454}
# Budgets: the memory of the card class each column stands for (profiles/gpus.yaml memory_bytes):
# RTX-4090 (24 GB), A100-SXM-40G, A100-SXM-80G.
BUDGETS = {"24": 25757220864, "40": 42949672960, "80": 85899345920}
MODEL = "Llama-3.1-8B"
SMOKE_BUDGETS = {"3m": 3_000_000, "6m": 6_000_000}


def probe_case(cutoff: int, budget_label: str, budget: int | None, *, smoke: bool) -> Case:
    if smoke:
        # no warm-up step on the CPU: the second step is the steady state (optimizer states exist)
        c = case("ctx", "tiny", "lora", cutoff, 1, rank=8, steps=2)
    else:
        c = case("ctx", MODEL, "qlora", cutoff, 1, rank=32, steps=1)
    return Case(f"{c.name}-budget{budget_label}", c.model, c.train, steps=c.steps, budget_bytes=budget,
                group="max_context")


def search_max(fits: Callable[[int], bool], lo: int, hi: int, step: int, *, floor: int = 64,
               ceiling: int = 1 << 20) -> tuple[int | None, list[tuple[int, bool]]]:
    """Largest multiple of `step` for which fits() holds, assuming fits is monotone (True, then False).

    The bracket [lo, hi] is a guess: it is widened (down by halving, up by x1.5) until lo fits and hi
    does not. Returns (largest fitting cutoff or None, probes in order).
    """
    probes: list[tuple[int, bool]] = []

    def check(n: int) -> bool:
        ok = fits(n)
        probes.append((n, ok))
        return ok

    lo, hi = max(floor, lo // step * step), max(lo + step, -(-hi // step) * step)
    while not check(lo):
        if lo <= floor:
            return None, probes
        hi, lo = lo, max(floor, lo // 2 // step * step)
    while check(hi):
        if hi >= ceiling:
            return hi, probes
        lo, hi = hi, min(ceiling, int(hi * 1.5) // step * step)
    while hi - lo > step:
        mid = (lo + hi) // 2 // step * step
        if mid in (lo, hi):
            break
        if check(mid):
            lo = mid
        else:
            hi = mid
    return lo, probes


def predicted_max(budget: int, device_bytes: Callable[[int], int | None], *, step: int = 16) -> int | None:
    """Largest cutoff whose predicted device peak fits `budget` (search over the prediction)."""
    def fits(n: int) -> bool:
        b = device_bytes(n)
        return b is not None and b <= budget

    best, _ = search_max(fits, 1024, 8192, step, floor=step)
    return best


def measure_budget(label: str, budget: int | None, out_dir: Path, *, device: str, smoke: bool, guess: int,
                   timeout_s: float, resolution: float) -> dict[str, Any]:
    """Binary search over the cutoff on the device; each probe one subprocess (cached)."""
    step = max(16, int(guess * resolution) // 16 * 16)
    results: dict[int, dict[str, Any]] = {}

    def fits(n: int) -> bool:
        c = probe_case(n, label, budget, smoke=smoke)
        r = run_case(c, out_dir / f"{c.name}.json", device=device, timeout_s=timeout_s)
        results[n] = r
        print(f"  budget {label}: cutoff {n}: {r.get('status')}", file=sys.stderr, flush=True)
        if r.get("status") not in ("ok", "oom"):
            raise RuntimeError(f"probe {c.name} ended {r.get('status')}: {str(r.get('error'))[:300]}")
        return r["status"] == "ok"

    try:
        best, probes = search_max(fits, int(guess * 0.9), int(guess * 1.1), step)
    except RuntimeError as e:
        return {"measured_cutoff": None, "resolution_tokens": step, "incomplete": str(e),
                "probes": [{"cutoff": n, "fits": r.get("status") == "ok", "peak": r.get("peak")}
                           for n, r in sorted(results.items())]}
    return {"measured_cutoff": best, "resolution_tokens": step,
            "probes": [{"cutoff": n, "fits": ok, "peak": results[n].get("peak"), "context": results[n].get("context")}
                       for n, ok in probes]}


def measured_from_probes(out_dir: Path, label: str) -> dict[str, Any]:
    """--report-only: the answer the cached probes give (largest fitting cutoff below the smallest OOM)."""
    probes = []
    for path in sorted(out_dir.glob(f"ctx-*-budget{label}.json")):
        r = json.loads(path.read_text())
        if r.get("status") in ("ok", "oom"):
            probes.append({"cutoff": int(r["config"]["train"]["cutoff_len"]), "fits": r["status"] == "ok",
                           "peak": r.get("peak"), "context": r.get("context")})
    probes.sort(key=lambda p: p["cutoff"])
    fit = [p["cutoff"] for p in probes if p["fits"]]
    oom = [p["cutoff"] for p in probes if not p["fits"]]
    best = max(fit) if fit and (not oom or max(fit) < min(oom)) else None
    out: dict[str, Any] = {"measured_cutoff": best, "probes": probes,
                           "resolution_tokens": (min(oom) - best) if best and oom else None}
    if best is None or not oom:
        out["incomplete"] = "the cached probes do not bracket the largest cutoff"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Largest trainable cutoff: predicted vs measured vs Unsloth.")
    ap.add_argument("--device", choices=("cuda", "cpu"))
    ap.add_argument("--smoke", action="store_true", help="tiny model with simulated OOM budgets (CPU)")
    ap.add_argument("--budgets", nargs="*", help="labels among 24 40 80 (default all)")
    ap.add_argument("--out-dir", type=Path)
    ap.add_argument("--results-dir", type=Path)
    ap.add_argument("--calibration", type=Path, help="calibration for the prediction (default: chosen for the card)")
    ap.add_argument("--predictor", choices=PREDICTORS, default="auto")
    ap.add_argument("--resolution", type=float, default=0.02, help="search step as a fraction of the guess")
    ap.add_argument("--timeout-s", type=float, default=150.0)
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="use cached probes only (no new measurement)")
    args = ap.parse_args(argv)
    from benchmarks.harness import default_device

    device = args.device or default_device()
    budgets = SMOKE_BUDGETS if args.smoke else BUDGETS
    labels = args.budgets or list(budgets)
    out_dir = args.out_dir or ROOT / "out" / "benchmarks" / f"max-context-{device}"
    gpu = None if args.smoke else card_info(out_dir, device)
    card = int(gpu["memory_bytes"]) if gpu else None
    pred_device = "cuda" if gpu else "cpu"
    rows = []
    overheads, cal_note = _overheads(args.calibration, gpu)
    spec = resolve_model("tiny" if args.smoke else MODEL)
    for label in labels:
        budget = budgets[label]
        cap = None if (not args.smoke and card and budget >= card) else budget
        guess = UNSLOTH_HF_FA2.get(label) or (256 if label == "3m" else 640)

        def device_bytes(n: int, label: str = label, cap: int | None = cap) -> int | None:
            pred = predict_tensors(probe_case(n, label, cap, smoke=args.smoke), predictor=args.predictor,
                                   device=pred_device)
            return None if pred is None else overheads.device_bytes(pred["peak_tensor_bytes"], tokens=n,
                                                                    vocab=spec.vocab_size,
                                                                    hidden=spec.hidden_size)

        predicted = predicted_max(min(budget, card or budget), device_bytes)
        row: dict[str, Any] = {"budget": label, "budget_bytes": budget, "capped": cap is not None,
                               "predicted_cutoff": predicted, "unsloth_hf_fa2": UNSLOTH_HF_FA2.get(label)}
        if args.report_only:
            row.update(measured_from_probes(out_dir, label))
        else:
            row.update(measure_budget(label, cap, out_dir, device=device, smoke=args.smoke,
                                      guess=predicted or guess, timeout_s=args.timeout_s,
                                      resolution=args.resolution))
        m = row.get("measured_cutoff")
        row["error"] = round((predicted - m) / m, 5) if predicted and m else None
        rows.append(row)
    if args.no_report:
        return 0
    results_dir = args.results_dir or (out_dir if args.smoke else ROOT / "benchmarks" / "results")
    _write(rows, results_dir, gpu_name=gpu["name"] if gpu else "cpu", cal_note=cal_note, smoke=args.smoke)
    return 0


def card_info(out_dir: Path, device: str) -> dict[str, Any] | None:
    """The measured card: from a cached probe (so --report-only works anywhere), else from torch."""
    for path in sorted(out_dir.glob("ctx-*.json")):
        gpu = json.loads(path.read_text()).get("gpu") or {}
        if gpu.get("memory_bytes"):
            return gpu
    if device != "cuda":
        return None
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "memory_bytes": int(props.total_memory),
            "compute_capability": f"{props.major}.{props.minor}"}


def _overheads(path: Path | None, gpu: dict[str, Any] | None) -> tuple[DeviceOverheads, str]:
    if gpu is None:
        return DeviceOverheads(), "CPU: live tensors only"
    from planner.hardware.calibration import CalibrationFile, current_stack, select_calibration
    from planner.hardware.gpu_spec import GpuSpec

    if path:
        cal = CalibrationFile.from_json(json.loads(path.read_text()), path=str(path))
        return cal.overheads, f"calibration: {cal.describe()}"
    spec = GpuSpec(gpu["name"], int(gpu["memory_bytes"]), compute_capability=gpu.get("compute_capability"))
    cal, note, _ = select_calibration(spec, current_stack())
    if cal is None:
        from planner.memory import default_overheads

        return default_overheads(spec), note
    return cal.overheads, note


def _write(rows: list[dict[str, Any]], results_dir: Path, *, gpu_name: str, cal_note: str, smoke: bool) -> None:
    name = gpu_name
    label = "cpu-smoke" if smoke else gpu_label(name)
    method = "lora r=8, batch 1, checkpointing" if smoke else "qlora r=32, batch 1, checkpointing"
    doc = {"gpu": name, "model": "tiny" if smoke else MODEL, "method": method,
           "calibration": cal_note, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "unsloth_source": "Unsloth Llama 3.1 max context table, Hugging Face + FA2 column", "budgets": rows}
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"max-context-{label}.json").write_text(json.dumps(doc, indent=1) + "\n")
    table = [[r["budget"], r.get("predicted_cutoff") or "-", r.get("measured_cutoff") or "-",
              fmt_pct(r.get("error")), r.get("unsloth_hf_fa2") or "-", r.get("resolution_tokens", "-"),
              len(r.get("probes", []))] for r in rows]
    md = (f"# Largest trainable cutoff on {name}\n\n{doc['model']}, {doc['method']}. {cal_note}.\n\n"
          + md_table(["budget GB", "predicted", "measured", "error", "Unsloth HF+FA2", "step", "probes"], table))
    (results_dir / f"max-context-{label}.md").write_text(md)
    print(md, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
