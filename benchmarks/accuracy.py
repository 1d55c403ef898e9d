"""Held-out accuracy: predicted vs measured peak device memory on configurations never used for fitting,
with the published rules of thumb (planner.memory.anchors) side by side.

    python -m benchmarks.accuracy                               # measure the accuracy set (CUDA) + report
    python -m benchmarks.accuracy --no-report --out-dir $OUT/acc  # measure only (analyse elsewhere)
    python -m benchmarks.accuracy --report-only --out-dir DIR   # report on measurements made earlier
    python -m benchmarks.accuracy --device cpu --smoke          # the CPU code path on tiny models (CI)

Writes benchmarks/results/accuracy-<gpu>.json (a `configs` list: gpu, name, predicted_peak_bytes,
measured_peak_bytes, each anchor's prediction, ...), accuracy-<gpu>.md and accuracy-<gpu>.png.
Predicted = the analytic model's live tensors + the device constants of the calibration chosen for
the card (planner.hardware.calibration.select_calibration, or --calibration). Measured = the NVML peak
(CUDA), or the live-tensor peak on the CPU, where there is no device overhead to predict.
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
from benchmarks.report import (
    error_stats,
    fmt_abs_pct,
    fmt_gib,
    fmt_pct,
    gpu_label,
    md_table,
    rel_error,
    scatter_png,
)
from planner.hardware.calibration import CalibrationFile, DeviceOverheads, select_calibration
from planner.hardware.gpu_spec import GpuSpec
from planner.memory.anchors import ANCHORS, anchors_for

ROOT = Path(__file__).resolve().parents[1]

GOALS = {"median_abs_error": 0.03, "max_abs_error": 0.07, "under_beyond_3pct": 0, "min_configs": 20}


def measured_peak(result: dict[str, Any]) -> int | None:
    """The NVML device peak on CUDA (else reserved); the live-tensor peak on the CPU."""
    peak = result.get("peak") or {}
    if result.get("device") == "cuda":
        return peak.get("device_bytes") or peak.get("reserved_bytes")
    return peak.get("allocated_bytes")


def choose_calibration(results: list[dict[str, Any]], path: Path | None
                       ) -> tuple[DeviceOverheads, dict[str, Any]]:
    """The device constants to add (and where they came from)."""
    if path is not None:
        cal = CalibrationFile.from_json(json.loads(path.read_text()), path=str(path))
        return cal.overheads, {"path": str(path), "note": f"calibration: {cal.describe()}", "extra_margin": 0.0,
                               "fitted": cal.fitted}
    ok = [r for r in results if r.get("status") == "ok"]
    if not ok or ok[0].get("device") != "cuda":
        return DeviceOverheads(), {"note": "CPU: live tensors only, no device overheads", "extra_margin": 0.0}
    g = ok[0]["gpu"]
    spec = GpuSpec(name=g["name"], memory_bytes=int(g.get("memory_bytes") or 0),
                   compute_capability=g.get("compute_capability"))
    cal, note, margin = select_calibration(spec, ok[0].get("stack"))
    if cal is None:
        return DeviceOverheads(), {"note": note, "extra_margin": margin}
    return cal.overheads, {"path": cal.path, "note": note, "extra_margin": margin, "fitted": cal.fitted}


def build_rows(results: list[dict[str, Any]], overheads: DeviceOverheads,
               predict: Callable[[Case], dict[str, Any] | None]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r.get("status") != "ok":
            continue
        case = Case.from_json(r["config"])
        spec, train = case.spec(), case.train_config()
        pred = predict(case)
        measured = measured_peak(r)
        if pred is None or measured is None:
            r["status"], r["error"] = "unpredicted", "no live-tensor prediction" if pred is None else "no peak"
            continue
        tensors = pred["peak_tensor_bytes"]
        vocab = 0 if train.use_liger_kernel else spec.vocab_size  # logits materialized (no fused loss)
        predicted = overheads.device_bytes(tensors, tokens=case.tokens, hidden=spec.hidden_size, vocab=vocab)
        anchors = anchors_for(spec, train)
        peak = r.get("peak") or {}
        rows.append({
            "gpu": (r.get("gpu") or {}).get("name", r.get("device")), "name": case.name, "model": case.model,
            "method": train.method, "seq_len": train.cutoff_len, "batch": train.per_device_train_batch_size,
            "gradient_checkpointing": train.gradient_checkpointing, "liger": train.use_liger_kernel,
            "attn": train.attn_implementation, "tokens": case.tokens,
            "predicted_tensor_bytes": tensors, "predicted_peak_bytes": predicted, "measured_peak_bytes": measured,
            "measured_allocated_bytes": peak.get("allocated_bytes"), "measured_reserved_bytes": peak.get("reserved_bytes"),
            "error": round(rel_error(predicted, measured), 5), "planner_peak_bytes": pred.get("peak_bytes"),
            "predictor": pred.get("predictor"),
            "anchors": anchors, "anchor_errors": {k: _round(rel_error(v, measured)) for k, v in anchors.items()},
        })
    return rows


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 5)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ours = error_stats([(r["predicted_peak_bytes"], r["measured_peak_bytes"]) for r in rows])
    anchors = {a: error_stats([(r["anchors"][a], r["measured_peak_bytes"]) for r in rows]) for a in ANCHORS}
    met = {"median_abs_error": ours.get("median_abs_error", 1) <= GOALS["median_abs_error"],
           "max_abs_error": ours.get("max_abs_error", 1) <= GOALS["max_abs_error"],
           "under_beyond_3pct": ours.get("under_beyond_3pct", 1) <= GOALS["under_beyond_3pct"],
           "min_configs": ours.get("n", 0) >= GOALS["min_configs"]}
    return {"vramplan": ours, "anchors": anchors, "goals": GOALS, "goals_met": met}


def markdown(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    v = s["vramplan"]
    lines = [f"# Memory prediction accuracy on {doc['gpu']}\n",
             f"Held-out configurations (never used for fitting): {v.get('n', 0)}. {doc['calibration']['note']}. "
             f"Live-tensor predictor: {', '.join(doc['predictor']) or '-'}. Created {doc['created']}.\n"]
    head = ["predictor", "n", "median abs error", "max abs error", "under-predicted", "under beyond 3%"]
    table = [["vramplan", v.get("n", 0), fmt_abs_pct(v.get("median_abs_error")), fmt_abs_pct(v.get("max_abs_error")),
              v.get("under_predicted", "-"), v.get("under_beyond_3pct", "-")]]
    for a, st in s["anchors"].items():
        table.append([a, st.get("n", 0), fmt_abs_pct(st.get("median_abs_error")), fmt_abs_pct(st.get("max_abs_error")),
                      st.get("under_predicted", "-"), st.get("under_beyond_3pct", "-")])
    lines += [md_table(head, table)]
    lines.append("Goals: " + ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in s["goals_met"].items())
                 + ".\n")
    head = ["config", "measured GiB", "vramplan GiB", "error"] + [f"{a} GiB" for a in ANCHORS]
    rows = [[r["name"], fmt_gib(r["measured_peak_bytes"]), fmt_gib(r["predicted_peak_bytes"]), fmt_pct(r["error"])]
            + [f"{fmt_gib(r['anchors'][a])} ({fmt_pct(r['anchor_errors'][a])})" if r["anchors"][a] else "-"
               for a in ANCHORS] for r in doc["configs"]]
    lines += ["## Per configuration\n", md_table(head, rows)]
    if doc["failed"]:
        lines += ["## Not measured\n", md_table(["config", "status", "error"],
                                                [[f["name"], f["status"], (f["error"] or "").splitlines()[0][:120]
                                                  if f["error"] else ""] for f in doc["failed"]])]
    return "\n".join(lines)


def write_report(results: list[dict[str, Any]], results_dir: Path, *, calibration: Path | None,
                 predict: Callable[[Case], dict[str, Any] | None], label: str | None = None) -> dict[str, Any]:
    overheads, cal_info = choose_calibration(results, calibration)
    ok = [r for r in results if r.get("status") == "ok"]
    rows = build_rows(results, overheads, predict)
    gpu = (ok[0].get("gpu") or {}).get("name", "cpu") if ok else "?"
    label = label or gpu_label(gpu)
    doc = {"gpu": gpu, "label": label, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "stack": ok[0].get("stack") if ok else {}, "calibration": cal_info,
           "predictor": sorted({r["predictor"] for r in rows if r.get("predictor")}),
           "summary": summarize(rows), "configs": rows,
           "failed": [{"name": r["config"]["name"], "status": r.get("status"), "error": r.get("error")}
                      for r in results if r.get("status") != "ok"]}
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"accuracy-{label}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (results_dir / f"accuracy-{label}.md").write_text(markdown(doc))
    series = {"vramplan": [(r["measured_peak_bytes"], r["predicted_peak_bytes"]) for r in rows]}
    for a in ANCHORS:
        series[a] = [(r["measured_peak_bytes"], r["anchors"][a]) for r in rows if r["anchors"][a]]
    v = doc["summary"]["vramplan"]
    title = (f"{gpu}: predicted vs measured peak, {v.get('n', 0)} held-out configs\n"
             f"vramplan median |err| {fmt_abs_pct(v.get('median_abs_error'))}, max {fmt_abs_pct(v.get('max_abs_error'))}")
    xlabel = ("measured peak device memory, NVML (GiB)" if ok and ok[0].get("device") == "cuda"
              else "measured peak live tensors (GiB)")
    scatter_png(series, results_dir / f"accuracy-{label}.png", title=title, xlabel=xlabel)
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Held-out accuracy of the memory predictions, with anchors.")
    ap.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    ap.add_argument("--smoke", action="store_true", help="tiny models (the smoke-accuracy set)")
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--names", nargs="*")
    ap.add_argument("--out-dir", type=Path, help="per-case results (default out/benchmarks/<set>-<device>)")
    ap.add_argument("--results-dir", type=Path, help="report folder (default benchmarks/results; smoke: out-dir)")
    ap.add_argument("--calibration", type=Path, help="calibration file (default: chosen for the measured card)")
    ap.add_argument("--predictor", choices=PREDICTORS, default="auto")
    ap.add_argument("--timeout-s", type=float, default=240.0)
    ap.add_argument("--time-budget-s", type=float)
    ap.add_argument("--no-report", action="store_true", help="measure only")
    ap.add_argument("--report-only", action="store_true", help="report on results already in --out-dir")
    args = ap.parse_args(argv)
    from benchmarks.harness import default_device

    device = args.device or default_device()
    set_name = "smoke-accuracy" if args.smoke else "accuracy"
    cases = select(SETS[set_name], models=args.models, names=args.names)
    out_dir = args.out_dir or ROOT / "out" / "benchmarks" / f"{set_name}-{device}"
    if args.report_only:
        results = [json.loads(p.read_text()) for c in cases if (p := out_dir / f"{c.name}.json").is_file()]
    else:
        results = run_cases(cases, out_dir, device=device, timeout_s=args.timeout_s,
                            time_budget_s=args.time_budget_s)
    if args.no_report:
        return 0
    results_dir = args.results_dir or (out_dir if args.smoke else ROOT / "benchmarks" / "results")
    measured_on = next((r["device"] for r in results if r.get("status") == "ok"), device)  # --report-only elsewhere
    doc = write_report(results, results_dir, calibration=args.calibration,
                       predict=lambda c: predict_tensors(c, predictor=args.predictor, device=measured_on))
    v = doc["summary"]["vramplan"]
    print(f"accuracy-{doc['label']}: n={v.get('n', 0)} median |error| {fmt_abs_pct(v.get('median_abs_error'))} "
          f"max {fmt_abs_pct(v.get('max_abs_error'))} under>3% {v.get('under_beyond_3pct', '-')} -> {results_dir}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
