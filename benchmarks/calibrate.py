"""Measure the calibration matrix on this card and fit its device constants.

    python -m benchmarks.calibrate --dry-run                    # list the matrix
    python -m benchmarks.calibrate                              # measure (CUDA), fit, write the profile
    python -m benchmarks.calibrate --no-fit --out-dir $OUT/cal  # measure only (analyse elsewhere)
    python -m benchmarks.calibrate --fit-only --out-dir DIR     # fit measurements made earlier
    python -m benchmarks.calibrate --device cpu --models tiny   # the CPU code path (CI)

Each case runs in its own subprocess (benchmarks/harness.py), with a per-case timeout; results are
kept per case, so a stopped run continues where it stopped. The fit (planner.hardware.calibration_fit) sets
the device constants against the analytic model's live-tensor prediction for each case, and the
profile keeps the raw measurements beside the fitted constants:
profiles/calibration/<gpu>-<stack>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.harness import run_cases
from benchmarks.matrix import SETS, Case, select
from benchmarks.predict import PREDICTORS, predict_tensors
from planner.errors import UserError
from planner.hardware.calibration import CalibrationFile
from planner.hardware.calibration_fit import fit_overheads, point_from_record
from planner.units import GIB

ROOT = Path(__file__).resolve().parents[1]

KEEP = ("config", "status", "error", "device", "gpu", "stack", "model", "tokens", "hidden_size", "micro_batches",
        "peak", "phases", "context", "timing", "notes", "predicted")

Predict = Callable[[Case], "dict[str, Any] | None"]


def load_results(out_dir: Path, cases: list[Case]) -> list[dict[str, Any]]:
    out = []
    for c in cases:
        path = out_dir / f"{c.name}.json"
        if path.is_file():
            out.append(json.loads(path.read_text()))
    return out


def attach_predictions(results: list[dict[str, Any]], predict: Predict) -> None:
    """Add result["predicted"] (the live-tensor prediction) to each successful result."""
    for r in results:
        if r.get("status") == "ok" and not r.get("predicted"):
            pred = predict(Case.from_json(r["config"]))
            if pred:
                r["predicted"] = pred


def fit_results(results: list[dict[str, Any]], predict: Predict) -> CalibrationFile:
    """Fit the device constants to measured results; the file keeps the raw measurements."""
    attach_predictions(results, predict)
    points = [p for r in results if (p := point_from_record(r)) is not None]
    if not points:
        raise SystemExit("no successful measurement with a prediction to fit (is planner.memory available? "
                         "try --predictor simulate)")
    overheads, quality = fit_overheads(points)
    ok = [r for r in results if r.get("status") == "ok"]
    stacks = {json.dumps(r.get("stack"), sort_keys=True) for r in ok}
    quality.update({"cases": len(results), "failed": [r["config"]["name"] for r in results if r.get("status") != "ok"],
                    "predictor": sorted({r["predicted"].get("predictor", "?") for r in ok if r.get("predicted")}),
                    "mixed_stacks": len(stacks) > 1})
    return CalibrationFile(
        gpu=ok[0].get("gpu") or {"name": ok[0].get("device", "?")}, stack=ok[0].get("stack") or {},
        fitted=overheads.to_json(), fit_quality=quality,
        measurements=[{k: r[k] for k in KEEP if k in r} for r in results],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def print_matrix(cases: list[Case], predictor: str) -> None:
    from benchmarks.predict import analytic_available

    show = predictor in ("analytic", "auto") and analytic_available()
    print(f"{'case':62} {'model':24} {'tokens':>7} {'steps':>5}" + ("  predicted GiB" if show else ""))
    for c in cases:
        line = f"{c.name:62} {c.model:24} {c.tokens:7d} {c.steps:5d}"
        if show:
            pred = predict_tensors(c, predictor="analytic")
            line += f"  {pred['peak_tensor_bytes'] / GIB:8.2f}" if pred else "  -"
        print(line)
    print(f"{len(cases)} cases", file=sys.stderr)


def default_device() -> str:
    from benchmarks.harness import default_device

    return default_device()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Measure the calibration matrix and fit device constants.")
    ap.add_argument("--set", choices=sorted(SETS), help="default: calibration (smoke-calibration on the CPU)")
    ap.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    ap.add_argument("--models", nargs="*", help="only these models (e.g. tiny, Qwen2.5-0.5B)")
    ap.add_argument("--names", nargs="*", help="only cases whose name contains one of these")
    ap.add_argument("--out-dir", type=Path, help="per-case results (default out/benchmarks/<set>-<device>)")
    ap.add_argument("--timeout-s", type=float, default=240.0, help="per case (default 240)")
    ap.add_argument("--time-budget-s", type=float, help="start no new case after this many seconds")
    ap.add_argument("--predictor", choices=PREDICTORS, default="auto", help="live-tensor prediction to fit against")
    ap.add_argument("--calibration-out", type=Path, help="default profiles/calibration/<gpu>-<stack>.json "
                    "(CUDA) or <out-dir>/calibration.json (CPU)")
    ap.add_argument("--dry-run", action="store_true", help="print the matrix and exit")
    ap.add_argument("--no-fit", action="store_true", help="measure only")
    ap.add_argument("--fit-only", action="store_true", help="fit results already in --out-dir")
    ap.add_argument("--no-resume", action="store_true", help="measure again even where a result exists")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device or ("cpu" if args.dry_run else default_device())
    set_name = args.set or ("calibration" if device == "cuda" or args.dry_run or args.fit_only
                            else "smoke-calibration")
    cases = select(SETS[set_name], models=args.models, names=args.names)
    if not cases:
        print(f"no case of set {set_name!r} matches the filters", file=sys.stderr)
        return 2
    if args.dry_run:
        print_matrix(cases, args.predictor)
        return 0
    out_dir = args.out_dir or ROOT / "out" / "benchmarks" / f"{set_name}-{device}"
    if args.fit_only:
        results = load_results(out_dir, cases)
    else:
        results = run_cases(cases, out_dir, device=device, timeout_s=args.timeout_s,
                            time_budget_s=args.time_budget_s, resume=not args.no_resume)
    if args.no_fit:
        return 0
    device = next((r["device"] for r in results if r.get("status") == "ok"), device)  # --fit-only elsewhere
    cal = fit_results(results, lambda c: predict_tensors(c, predictor=args.predictor, device=device))
    if args.calibration_out:
        path = args.calibration_out
    elif device == "cuda":
        path = ROOT / "profiles" / "calibration" / f"{cal.slug()}.json"
    else:
        path = out_dir / "calibration.json"
    cal.write(path)
    q = cal.fit_quality
    print(f"wrote {path}: {q['n']} points, median |error| {q['median_abs_error']:.2%}, "
          f"max {q['max_abs_error']:.2%}, {q['under_predicted']} under-predicted", file=sys.stderr)
    print(json.dumps(cal.fitted, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
