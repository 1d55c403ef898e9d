"""Reports from one GPU session's rows.jsonl (benchmarks/session.py): calibration, accuracy, max context,
the open questions and the isolation check.

    python -m benchmarks.session --analyse rows.jsonl [--results-dir benchmarks/results]

Rows are unpacked into out/gpu-session/raw/<group>/<case>.json (the per-case layout the other drivers
read), then: the calibration group is fitted (profiles/calibration/<gpu>-<stack>.json on CUDA), the
accuracy group is reported against that calibration (accuracy-<gpu>.*), the max-context probes give
max-context-<gpu>.*, and the question pairs, the MoE answer, the isolation pair and the schedule go
to gpu-session-<gpu>.{json,md}.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.matrix import Case
from benchmarks.predict import predict_tensors
from benchmarks.report import fmt_gib, fmt_pct, gpu_label, md_table, rel_error

ROOT = Path(__file__).resolve().parents[1]

GROUP_DIRS = {"calibration": "calibration", "accuracy": "accuracy", "max_context": "max_context",
              "questions": "questions", "isolation": "isolation"}


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def unpack(rows: list[dict[str, Any]], raw: Path) -> dict[str, list[dict[str, Any]]]:
    """Write each row as raw/<group>/<name>.json; return the rows by group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        cfg = r.get("config") or {}
        group = cfg.get("group") or "other"
        groups.setdefault(group, []).append(r)
        folder = raw / GROUP_DIRS.get(group, "other")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{cfg.get('name', 'unnamed')}.json").write_text(json.dumps(r, indent=1) + "\n")
    return groups


def _peaks(r: dict[str, Any]) -> dict[str, Any]:
    p = r.get("peak") or {}
    return {"allocated": p.get("allocated_bytes"), "reserved": p.get("reserved_bytes"), "device": p.get("device_bytes"),
            "device_source": p.get("device_source"), "tokens_per_second": (r.get("timing") or {}).get("tokens_per_second")}


def pair_rows(questions: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    """The question pairs: both halves' peaks, the difference, and the analytic prediction of each half."""
    by_name = {r["config"]["name"]: r for r in questions if r.get("config", {}).get("name")}
    out = []
    for name, r in sorted(by_name.items()):
        cfg = r["config"]
        entry: dict[str, Any] = {"name": name, "status": r.get("status"), "recipe": cfg.get("recipe", "peft"),
                                 "env": cfg.get("env") or {}, **_peaks(r)}
        if r.get("status") == "ok" and "model" in cfg and "train" in cfg:
            c = Case.from_json(cfg)
            pred = predict_tensors(c, predictor="analytic", device=device)
            if pred:
                entry["predicted_tensor_bytes"] = pred["peak_tensor_bytes"]
                entry["allocated_error"] = rel_error(pred["peak_tensor_bytes"], entry["allocated"])
        if r.get("answer"):
            entry["answer"] = {k: v.get("summary") for k, v in r["answer"].items()}
        if r.get("error"):
            entry["error"] = str(r["error"]).splitlines()[0][:200]
        out.append(entry)
    return out


def isolation_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The same configuration alone and beside others: every measured figure side by side."""
    alone = next((r for r in rows if r["config"]["name"].endswith("-alone")), None)
    shared = next((r for r in rows if r["config"]["name"].endswith("-shared")), None)
    out: dict[str, Any] = {}
    for label, r in (("alone", alone), ("shared", shared)):
        if r is None:
            continue
        out[label] = {"status": r.get("status"), **_peaks(r),
                      "device_total_delta": (r.get("peak") or {}).get("device_total_delta_bytes"),
                      "neighbours": (r.get("session") or {}).get("neighbours", [])}
    if alone and shared and alone.get("status") == shared.get("status") == "ok":
        out["difference"] = {k: (out["shared"][k] - out["alone"][k]) if out["shared"][k] is not None
                             and out["alone"][k] is not None else None for k in ("allocated", "reserved", "device")}
    return out


def schedule_summary(session: dict[str, Any] | None, rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not session:
        return {}
    sched = session.get("schedule") or []
    peak_reserved = max((e["reserved_after_bytes"] for e in sched), default=0)
    concurrent = max((len(e["running"]) for e in sched), default=0)
    return {"cases_started": len(sched), "max_reserved_bytes": peak_reserved, "limit_bytes": session.get("limit_bytes"),
            "card_bytes": session.get("card_bytes"), "max_concurrent": concurrent,
            "oversubscribed": len(session.get("oversubscribed") or []), "elapsed_s": session.get("elapsed_s"),
            "status_counts": session.get("status_counts")}


def analyse(rows_paths: Path | list[Path], *, results_dir: Path, raw: Path | None = None) -> int:
    """Reports from the rows of one or more calls (a later call's row replaces an earlier one of the same name)."""
    paths = [rows_paths] if isinstance(rows_paths, Path) else list(rows_paths)
    by_name: dict[str, dict[str, Any]] = {}
    sessions = []
    for call, path in enumerate(paths, 1):
        for r in read_rows(path):
            r.setdefault("session", {})["call"] = call
            by_name[(r.get("config") or {}).get("name", f"row{len(by_name)}")] = r
        session_path = path.with_name(path.name.replace("rows.jsonl", "session.json"))  # callN-rows -> callN-session
        if session_path.is_file():
            sessions.append(json.loads(session_path.read_text()))
    rows = list(by_name.values())
    raw = raw or ROOT / "out" / "gpu-session" / "raw"
    groups = unpack(rows, raw)
    ok = [r for r in rows if r.get("status") == "ok" and r.get("device")]
    device = ok[0]["device"] if ok else "cpu"
    gpu_name = ((ok[0].get("gpu") or {}).get("name") if ok else None) or "cpu"
    label = gpu_label(gpu_name) if device == "cuda" else "cpu-smoke"
    results_dir.mkdir(parents=True, exist_ok=True)

    from benchmarks import accuracy, calibrate, max_context

    def predict(c: Case) -> dict[str, Any] | None:
        return predict_tensors(c, predictor="analytic", device=device)

    cal_path = None
    cal_note = "no calibration cases measured"
    # fitted: the calibration cases and the question cases run as they are (peft's recipe, the session's
    # allocator setting); never the held-out accuracy cases
    cal_rows = groups.get("calibration", []) + [
        q for q in groups.get("questions", []) if "train" in (q.get("config") or {})
        and (q["config"].get("recipe") or "peft") == "peft" and not q["config"].get("env")]
    if sum(r.get("status") == "ok" for r in cal_rows) >= 3:
        cal = calibrate.fit_results(cal_rows, predict)
        cal_path = (ROOT / "profiles" / "calibration" / f"{cal.slug()}.json" if device == "cuda"
                    else results_dir / f"calibration-{label}.json")
        cal.write(cal_path)
        if Path.cwd() == ROOT and cal_path.is_relative_to(ROOT):  # reports name it relative to the project
            cal_path = cal_path.relative_to(ROOT)
        q = cal.fit_quality
        cal_note = (f"{cal_path.name}: {q['n']} points, median |error| {q['median_abs_error']:.2%}, "
                    f"max {q['max_abs_error']:.2%}")
        print(f"calibration -> {cal_path} ({cal_note})", file=sys.stderr)
    acc_doc = None
    if groups.get("accuracy"):
        acc_doc = accuracy.write_report(groups["accuracy"], results_dir, calibration=cal_path, predict=predict,
                                        label=label)
    if groups.get("max_context"):
        argv = ["--report-only", "--out-dir", str(raw / "max_context"), "--results-dir", str(results_dir)]
        argv += ["--calibration", str(cal_path)] if cal_path else []
        argv += ["--smoke", "--device", "cpu"] if device != "cuda" else ["--device", "cuda"]
        budgets = sorted({r["config"]["name"].rsplit("budget", 1)[-1] for r in groups["max_context"]})
        max_context.main(argv + ["--budgets", *budgets])

    doc = {"gpu": gpu_name, "label": label, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "stack": ok[0].get("stack") if ok else {}, "calibration": cal_note,
           "schedule": [schedule_summary(s, rows) for s in sessions],
           "isolation": isolation_rows(groups.get("isolation", [])),
           "questions": pair_rows(groups.get("questions", []), device),
           "accuracy": (acc_doc or {}).get("summary", {}).get("vramplan")}
    (results_dir / f"gpu-session-{label}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (results_dir / f"gpu-session-{label}.md").write_text(markdown(doc))
    print(markdown(doc), file=sys.stderr)
    return 0


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# GPU session on {doc['gpu']}\n", f"Created {doc['created']}. Stack: "
             + ", ".join(f"{k} {v}" for k, v in (doc.get("stack") or {}).items() if v) + ".\n",
             f"Calibration: {doc['calibration']}.\n"]
    for call, s in enumerate(doc["schedule"], 1):
        if s:
            lines.append(f"Call {call}: {s['cases_started']} cases started in {s['elapsed_s']} s, up to "
                         f"{s['max_concurrent']} at once; largest reserved sum {fmt_gib(s['max_reserved_bytes'])} GiB "
                         f"of a {fmt_gib(s['limit_bytes'])} GiB limit ({fmt_gib(s['card_bytes'])} GiB card); "
                         f"oversubscribed starts: {s['oversubscribed']}. Results: {s['status_counts']}.\n")
    iso = doc["isolation"]
    if iso:
        head = ["run", "status", "allocated GiB", "reserved GiB", "device GiB (own process)",
                "card-wide delta GiB", "neighbours"]
        table = [[k, v["status"], fmt_gib(v["allocated"]), fmt_gib(v["reserved"]), fmt_gib(v["device"]),
                  fmt_gib(v.get("device_total_delta")), len(v["neighbours"])]
                 for k, v in iso.items() if k != "difference"]
        lines += ["## Isolation: one case alone and beside others\n", md_table(head, table)]
        if iso.get("difference"):
            d = iso["difference"]
            lines.append("Shared minus alone: " + ", ".join(f"{k} {v:+,} B" for k, v in d.items() if v is not None)
                         + ".\n")
    if doc["questions"]:
        head = ["case", "status", "allocated GiB", "reserved GiB", "device GiB", "reserved-allocated GiB",
                "predicted tensors GiB", "allocated vs prediction", "tokens/s"]
        table = []
        for q in doc["questions"]:
            slack = (q["reserved"] - q["allocated"]) if q.get("reserved") and q.get("allocated") else None
            table.append([q["name"], q["status"], fmt_gib(q.get("allocated")), fmt_gib(q.get("reserved")),
                          fmt_gib(q.get("device")), fmt_gib(slack), fmt_gib(q.get("predicted_tensor_bytes")),
                          fmt_pct(q.get("allocated_error")), q.get("tokens_per_second") or "-"])
        lines += ["## Open questions (pairs differ in one thing)\n", md_table(head, table)]
        for q in doc["questions"]:
            for model_type, summary in (q.get("answer") or {}).items():
                lines.append(f"- {model_type}: {summary}")
            if q.get("error"):
                lines.append(f"- {q['name']}: {q['status']}: {q['error']}")
        lines.append("")
    return "\n".join(lines)
