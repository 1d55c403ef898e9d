"""Calibration in the loop: `plan` picks the card's calibration, plans with its overheads and its margin,
says which it used, and ignores (with one warning naming the file) what it cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.hardware.calibration import CalibrationFile
from planner.hardware.calibration_use import MARGIN_MIN, choose_calibration, evidence_margin, run_stack
from planner.hardware.gpus import parse_gpu
from planner.units import GIB
from tests.planner.test_cli import run

FIXED = ("--model", "Qwen2.5-7B", "--gpu", "RTX4090", "--fixed", "--cutoff", "1024", "--format", "json")


def _doc(gpu_name: str, *, context_gib: float = 3.0, n: int = 24, worst: float = -0.01) -> dict:
    return {"format": 1,
            "gpu": {"name": gpu_name, "memory_bytes": 25757220864, "compute_capability": "8.9", "vendor": "nvidia"},
            "stack": run_stack(),  # this machine's: no extra margin for another stack
            "fitted": {"cuda_context_bytes": int(context_gib * GIB), "cublas_workspace_bytes": 16 << 20,
                       "kernel_temp_bytes_per_token_hidden": 0.0, "allocator_slack_ratio": 0.02,
                       "allocator_slack_bytes": 256 << 20},
            "fit_quality": {"n": n, "worst_under": worst, "median_abs_error": 0.01}, "measurements": []}


def _home_calibration(tmp_path: Path, monkeypatch, name: str, text: str) -> Path:
    home = tmp_path / "home"
    (home / "calibration").mkdir(parents=True)
    monkeypatch.setenv("VRAMPLAN_HOME", str(home))
    path = home / "calibration" / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_calibration_file_changes_the_next_plan(tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_HOME", str(tmp_path / "empty"))
    code, out, _ = run(*FIXED)
    before = json.loads(out)
    # before: no 4090 calibration (the defaults, or another card's borrowed with a wider margin)
    assert code == 0 and "4090" not in str(before["calibration"]["gpu"])

    path = _home_calibration(tmp_path, monkeypatch, "nvidia-geforce-rtx-4090-torch2.11.json",
                             json.dumps(_doc("NVIDIA GeForce RTX 4090")))
    code, out, err = run(*FIXED)
    after = json.loads(out)
    assert after["calibration"]["file"] == str(path)
    assert str(path) in after["memory"]["overheads_source"] and str(path) in err  # says which it used
    # its overheads: a 3 GiB context instead of the default 0.5 GiB, its own slack model
    assert after["memory"]["components"]["cuda_context"] == 3 * GIB
    assert after["memory"]["peak_bytes"] != before["memory"]["peak_bytes"]
    # its margin: 1% worst miss + 5%/sqrt(24) = 2.0%, not the uncalibrated 5%
    assert after["memory"]["margin"] == pytest.approx(0.0202, abs=1e-4)
    assert "sqrt(24 measurements)" in err


def test_the_search_uses_it_too(tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_HOME", str(tmp_path / "empty"))
    args = ("--model", "Qwen2.5-7B", "--gpu", "RTX4090", "--format", "json")
    before = json.loads(run(*args)[1])
    _home_calibration(tmp_path, monkeypatch, "x.json", json.dumps(_doc("NVIDIA GeForce RTX 4090", context_gib=6)))
    after = json.loads(run(*args)[1])
    assert after["memory"]["components"]["cuda_context"] == 6 * GIB
    assert after["limit_bytes"] != before["limit_bytes"]  # another margin
    assert after["memory"]["fits"] is True


def test_a_malformed_calibration_is_ignored_with_one_warning_naming_it(tmp_path, monkeypatch):
    path = _home_calibration(tmp_path, monkeypatch, "broken.json", '{"gpu": {"name": "NVIDIA GeForce RTX 4090"},')
    code, out, err = run(*FIXED)
    doc = json.loads(out)
    assert code == 0 and doc["calibration"]["file"] != str(path)
    assert err.count(str(path)) == 1 and "not valid JSON" in err and "warning:" in err
    assert [w for w in doc["warnings"] if str(path) in w]


def test_a_calibration_with_non_numeric_constants_is_ignored(tmp_path, monkeypatch):
    doc = _doc("NVIDIA GeForce RTX 4090")
    doc["fitted"]["cuda_context_bytes"] = "lots"
    path = _home_calibration(tmp_path, monkeypatch, "bad.json", json.dumps(doc))
    code, out, err = run(*FIXED)
    assert code == 0 and json.loads(out)["calibration"]["file"] != str(path)
    assert str(path) in err and "not numbers" in err


def test_calibration_for_another_card_given_explicitly_is_ignored_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_HOME", str(tmp_path / "empty"))
    other = tmp_path / "h100.json"
    other.write_text(json.dumps(_doc("NVIDIA H100 80GB HBM3")), encoding="utf-8")
    code, out, err = run(*FIXED, "--calibration", str(other))
    doc = json.loads(out)
    assert code == 0 and doc["calibration"]["file"] != str(other)
    assert f"--calibration {other} ignored" in err and "NVIDIA H100 80GB HBM3" in err
    mine = tmp_path / "4090.json"
    mine.write_text(json.dumps(_doc("NVIDIA GeForce RTX 4090")), encoding="utf-8")
    doc = json.loads(run(*FIXED, "--calibration", str(mine))[1])
    assert doc["calibration"]["file"] == str(mine)


def test_an_h200_calibration_shipped_in_profiles_is_picked_for_gpu_h200(tmp_path, monkeypatch):
    """The file benchmarks/calibrate.py writes (profiles/calibration/<gpu>-<stack>.json) for `--gpu H200`."""
    import planner.hardware.calibration_use as cu

    monkeypatch.setenv("VRAMPLAN_HOME", str(tmp_path / "empty"))
    profiles = tmp_path / "profiles"
    (profiles / "calibration").mkdir(parents=True)
    doc = _doc("NVIDIA H200", context_gib=0.74, n=7, worst=-0.09615)
    doc["gpu"].update(memory_bytes=150754820096, compute_capability="9.0")
    name = "nvidia-h200-torch2.11-cuda13.0-expandable-segments-true.json"
    (profiles / "calibration" / name).write_text(json.dumps(doc), encoding="utf-8")
    monkeypatch.setattr(cu, "shipped_root", lambda: profiles / "calibration")
    choice = choose_calibration(parse_gpu("H200"))
    assert choice.calibration is not None and choice.calibration.path == f"profiles/calibration/{name}"
    assert choice.margin >= 0.096 + 0.05 / 7 ** 0.5 - 1e-9  # a 9.6% miss on 7 measurements: no 5% margin
    assert choice.warnings == ()


def test_the_margin_shrinks_as_evidence_grows():
    def cal(n, worst):
        return CalibrationFile(gpu={"name": "x"}, stack={}, fitted={}, fit_quality={"n": n, "worst_under": worst})

    margins = [evidence_margin(cal(n, -0.005))[0] for n in (3, 10, 30, 100, 1000)]
    assert margins == sorted(margins, reverse=True) and margins[0] > margins[-1]
    assert margins[-1] == MARGIN_MIN
    assert evidence_margin(cal(0, 0.0))[0] == 0.05  # no recorded quality: the uncalibrated margin
    assert evidence_margin(cal(50, -0.08))[0] > 0.08  # a fit that missed by 8% never plans with less


def test_cpu_plans_need_no_calibration():
    choice = choose_calibration(parse_gpu("cpu"))
    assert choice.calibration is None and choice.warnings == ()


def test_plan_calibrate_from_log_output_is_used_by_the_next_plan(tmp_path, monkeypatch):
    """Self-calibration: runs logged -> `plan calibrate --from-log` -> the next `plan` on that card uses it."""
    from tests.planner.test_calibration import _log_lines, synthetic_points

    home = tmp_path / "home"
    monkeypatch.setenv("VRAMPLAN_HOME", str(home))
    log = tmp_path / "runs.jsonl"
    log.write_text(_log_lines(synthetic_points(12)), encoding="utf-8")
    code, out, err = run("calibrate", "--from-log", str(log), "--format", "json")
    assert code == 0, err
    written = json.loads(out)["path"]
    assert Path(written).parent == home / "calibration"
    doc = json.loads(run("--model", "Qwen2.5-7B", "--gpu", "H100", "--format", "json")[1])
    assert doc["calibration"]["file"] == written
