"""calibrate.py's fit on harness-shaped results made from known device constants (+ noise)."""

from __future__ import annotations

import json
import random

import pytest
from bench_fakes import STACK, TRUE, fake_results

from benchmarks.calibrate import fit_results, main
from benchmarks.matrix import CALIBRATION
from planner.hardware.calibration import CalibrationFile, select_calibration
from planner.hardware.gpu_spec import GpuSpec

MIB, GIB = 1 << 20, 1 << 30


@pytest.fixture
def tensors():
    rng = random.Random(1)
    return {c.name: int(rng.uniform(2, 50) * GIB) for c in CALIBRATION}


def test_fit_recovers_constants(tensors):
    results = fake_results(list(CALIBRATION), tensors)
    cal = fit_results(results, lambda c: {"peak_tensor_bytes": tensors[c.name], "predictor": "stub"})
    got = cal.overheads
    assert got.cuda_context_bytes == pytest.approx(TRUE.cuda_context_bytes, abs=2 * MIB)
    assert got.cublas_workspace_bytes == pytest.approx(TRUE.cublas_workspace_bytes, abs=4 * MIB)
    assert got.kernel_temp_bytes_per_token_hidden == pytest.approx(4.0, abs=0.05)
    assert got.allocator_slack_ratio == pytest.approx(0.03, abs=5e-4)
    assert got.allocator_slack_bytes == pytest.approx(TRUE.allocator_slack_bytes, abs=20 * MIB)
    q = cal.fit_quality
    assert q["n"] == len(CALIBRATION) and q["failed"] == ["oom-case"] and q["predictor"] == ["stub"]
    assert len(cal.measurements) == len(CALIBRATION) + 1 and "predicted" in cal.measurements[0]
    assert cal.slug() == "nvidia-h100-80gb-hbm3-torch2.11-cuda13.0"


def test_written_profile_is_selected_for_the_card(tensors, tmp_path):
    cal = fit_results(fake_results(list(CALIBRATION), tensors),
                      lambda c: {"peak_tensor_bytes": tensors[c.name]})
    path = cal.write(tmp_path / f"{cal.slug()}.json")
    back = CalibrationFile.from_json(json.loads(path.read_text()), path=str(path))
    got, note, margin = select_calibration(GpuSpec("H100-SXM-80G", 85520809984, compute_capability="9.0"),
                                           STACK, (back,))
    assert got is back and margin == 0.0 and str(path) in note


def test_dry_run_lists_the_matrix(capsys):
    assert main(["--dry-run", "--predictor", "simulate"]) == 0
    out = capsys.readouterr().out
    assert all(c.name in out for c in CALIBRATION)


def test_fit_only_without_results_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no successful measurement"):
        main(["--fit-only", "--device", "cpu", "--out-dir", str(tmp_path), "--predictor", "simulate"])
