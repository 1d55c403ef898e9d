"""accuracy.py's report: rows with the required fields, statistics, Markdown and the plot."""

from __future__ import annotations

import json
import random

from bench_fakes import GPU, STACK, TRUE, fake_results

from benchmarks.accuracy import summarize, write_report
from benchmarks.matrix import ACCURACY
from planner.hardware.calibration import CalibrationFile
from planner.memory.anchors import ANCHORS

GIB = 1 << 30


def test_report_from_measurements(tmp_path):
    rng = random.Random(3)
    tensors = {c.name: int(rng.uniform(2, 40) * GIB) for c in ACCURACY}
    results = fake_results(list(ACCURACY), tensors)
    cal = CalibrationFile(gpu=GPU, stack=STACK, fitted=TRUE.to_json())
    cal_path = cal.write(tmp_path / "cal.json")
    doc = write_report(results, tmp_path, calibration=cal_path,
                       predict=lambda c: {"peak_tensor_bytes": tensors[c.name], "predictor": "stub"})
    label = doc["label"]
    assert label == "h100-sxm-80g"
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"accuracy-{label}.{ext}").stat().st_size > 0
    saved = json.loads((tmp_path / f"accuracy-{label}.json").read_text())
    rows = saved["configs"]
    assert len(rows) == len(ACCURACY)
    for r in rows:
        assert {"gpu", "name", "predicted_peak_bytes", "measured_peak_bytes", "anchors"} <= set(r)
        assert set(r["anchors"]) == set(ANCHORS)
        assert abs(r["error"]) < 0.002  # measurements follow the calibration up to 1 MiB of noise
    v = saved["summary"]["vramplan"]
    assert v["n"] == len(ACCURACY) and saved["summary"]["goals_met"]["min_configs"]
    assert [f["name"] for f in saved["failed"]] == ["oom-case"]
    assert "| vramplan |" in (tmp_path / f"accuracy-{label}.md").read_text()


def test_summary_counts_under_predictions():
    rows = [{"predicted_peak_bytes": p, "measured_peak_bytes": 100, "anchors": dict.fromkeys(ANCHORS)}
            for p in (90, 98, 101, 104)]
    s = summarize(rows)["vramplan"]
    assert s["n"] == 4 and s["under_predicted"] == 2 and s["under_beyond_3pct"] == 1
    assert s["max_abs_error"] == 0.1 and s["median_abs_error"] == 0.03
