"""The one-call GPU session end to end on the CPU: a case measures the same alone and beside others, and the
reports are written from its rows."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import session


@pytest.mark.slow
def test_cpu_session_end_to_end(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    args = argparse.Namespace(device="cpu", smoke=True, out_dir=tmp_path / "run", deadline_s=400.0, timeout_s=200.0,
                              fill=0.85, max_parallel=2, card_gib=0.05, budgets=[], followup=False)
    assert session.run_session(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "rows.jsonl").read_text().splitlines()]
    names = {r["config"]["name"]: r for r in rows}
    assert all(r["status"] == "ok" for r in rows), {n: r.get("error") for n, r in names.items()}
    alone = next(r for n, r in names.items() if n.endswith("-alone"))
    shared = next(r for n, r in names.items() if n.endswith("-shared"))
    assert alone["session"]["neighbours"] == [] and alone["session"]["alone"]
    assert shared["session"]["neighbours"], "the shared half must run beside another case"
    # tensor accounting is exact: the neighbours change nothing
    assert alone["peak"]["allocated_bytes"] == shared["peak"]["allocated_bytes"]
    doc = json.loads((tmp_path / "run" / "session.json").read_text())
    assert doc["oversubscribed"] == [] and doc["status_counts"] == {"ok": len(rows)}

    from benchmarks.session_report import analyse

    results = tmp_path / "results"
    assert analyse(tmp_path / "run" / "rows.jsonl", results_dir=results, raw=tmp_path / "raw") == 0
    report = json.loads((results / "gpu-session-cpu-smoke.json").read_text())
    assert report["isolation"]["difference"]["allocated"] == 0
    assert report["schedule"][0]["oversubscribed"] == 0
    assert (results / "accuracy-cpu-smoke.md").is_file() and (results / "calibration-cpu-smoke.json").is_file()
    assert (tmp_path / "raw" / "calibration").is_dir()
