"""Device calibration: the fit recovers known constants; selection follows the card/stack rules."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from planner.cli.calibration import calibrate_cmd
from planner.errors import UserError
from planner.hardware.calibration import (
    MARGIN_NONE,
    MARGIN_SAME_ARCH,
    MARGIN_STACK_DIFFERS,
    CalibrationFile,
    DeviceOverheads,
    select_calibration,
    stack_distance,
    user_calibration_dir,
    version_distance,
)
from planner.hardware.calibration_fit import (
    FitPoint,
    calibrate_from_log,
    fit_overheads,
    lstsq,
    point_from_record,
)
from planner.hardware.gpu_spec import GpuSpec
from planner.units import GIB, MIB

TRUE = DeviceOverheads(cuda_context_bytes=520 * MIB, cublas_workspace_bytes=32 * MIB,
                       kernel_temp_bytes_per_token_hidden=6.0, allocator_slack_ratio=0.04,
                       allocator_slack_bytes=150 * MIB)


def synthetic_points(n: int = 40, noise_bytes: float = 2 * MIB, seed: int = 0) -> list[FitPoint]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tensors = int(rng.uniform(2, 60) * GIB)
        tokens = rng.choice([512, 1024, 2048, 4096, 8192, 16384, 32768])
        hidden = rng.choice([896, 1536, 3584, 4096])
        alloc = TRUE.allocated_bytes(tensors, tokens=tokens, hidden=hidden) + rng.gauss(0, noise_bytes)
        reserved = alloc * (1 + TRUE.allocator_slack_ratio) + TRUE.allocator_slack_bytes + rng.gauss(0, noise_bytes)
        device = reserved + TRUE.cuda_context_bytes + rng.gauss(0, noise_bytes)
        out.append(FitPoint(f"p{i}", tensors, tokens, hidden, int(alloc), int(reserved), int(device)))
    return out


def test_lstsq_exact():
    rows = [[1.0, x] for x in (0.0, 1.0, 2.0, 3.0)]
    assert lstsq(rows, [1.0, 3.0, 5.0, 7.0]) == pytest.approx([1.0, 2.0])


def test_fit_recovers_known_constants():
    got, quality = fit_overheads(synthetic_points())
    assert got.cuda_context_bytes == pytest.approx(TRUE.cuda_context_bytes, abs=3 * MIB)
    assert got.cublas_workspace_bytes == pytest.approx(TRUE.cublas_workspace_bytes, abs=4 * MIB)
    assert got.kernel_temp_bytes_per_token_hidden == pytest.approx(6.0, abs=0.05)
    assert got.allocator_slack_ratio == pytest.approx(0.04, abs=5e-4)
    assert got.allocator_slack_bytes == pytest.approx(TRUE.allocator_slack_bytes, abs=20 * MIB)
    assert quality["n"] == 40 and quality["max_abs_error"] < 0.01


def test_fit_without_token_spread_keeps_a_constant():
    pts = [FitPoint(f"p{i}", (i + 1) * GIB, 1024, 1024, (i + 1) * GIB + 40 * MIB,
                    int((i + 1) * GIB * 1.1) + 40 * MIB, None) for i in range(4)]
    got, _ = fit_overheads(pts)
    assert got.kernel_temp_bytes_per_token_hidden == 0.0
    assert got.cublas_workspace_bytes == 40 * MIB
    assert got.cuda_context_bytes == 0


def test_fit_needs_three_points():
    with pytest.raises(UserError):
        fit_overheads(synthetic_points(2))


def test_device_model_layers():
    o = DeviceOverheads(cuda_context_bytes=100, cublas_workspace_bytes=10, kernel_temp_bytes_per_token_hidden=1.0,
                        allocator_slack_ratio=0.5, allocator_slack_bytes=5)
    assert o.allocated_bytes(1000, tokens=2, hidden=5) == 1020
    assert o.reserved_bytes(1000, tokens=2, hidden=5) == 1535
    assert o.device_bytes(1000, tokens=2, hidden=5) == 1635


# -- selection ---------------------------------------------------------------------------------------------
H100 = GpuSpec("H100-SXM-80G", 85520809984, compute_capability="9.0")
H200 = GpuSpec("H200-141G", 150754820096, compute_capability="9.0")
RTX4090 = GpuSpec("RTX-4090", 25757220864, compute_capability="8.9")
STACK = {"torch": "2.11.0", "cuda": "13.0", "transformers": "5.17.0", "PYTORCH_CUDA_ALLOC_CONF": None}


def cal(name: str, cc: str, mem: int, path: str, **stack) -> CalibrationFile:
    return CalibrationFile(gpu={"name": name, "compute_capability": cc, "memory_bytes": mem},
                           stack={**STACK, **stack}, fitted=TRUE.to_json(), path=path)


H100_CAL = cal("NVIDIA H100 80GB HBM3", "9.0", 85520809984, "h100.json")
H100_OLD = cal("NVIDIA H100 80GB HBM3", "9.0", 85520809984, "h100-old.json", torch="2.8.0")
A100_CAL = cal("NVIDIA A100-SXM4-80GB", "8.0", 85899345920, "a100.json")


def test_same_card_nearest_stack():
    got, note, margin = select_calibration(H100, STACK, (H100_OLD, H100_CAL, A100_CAL))
    assert got is H100_CAL and margin == 0.0 and "h100.json" in note


def test_same_card_other_stack_adds_margin():
    got, note, margin = select_calibration(H100, STACK, (H100_OLD, A100_CAL))
    assert got is H100_OLD and margin == MARGIN_STACK_DIFFERS and "differs" in note


def test_allocator_setting_counts_as_stack_difference():
    expandable = cal("NVIDIA H100 80GB HBM3", "9.0", 85520809984, "h100-exp.json",
                     PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    got, _, margin = select_calibration(H100, STACK, (expandable,))
    assert got is expandable and margin == MARGIN_STACK_DIFFERS


def test_nearest_card_same_architecture():
    got, note, margin = select_calibration(H200, STACK, (A100_CAL, H100_CAL))
    assert got is H100_CAL and margin == MARGIN_SAME_ARCH and "no calibration for H200-141G" in note


def test_another_architecture_borrows_no_calibration():
    # an RTX 4090 (sm89) planned with an A100's or H100's fitted slack and evidence margin was worse than
    # the sourced defaults: none is lent across architectures
    got, note, margin = select_calibration(RTX4090, STACK, (A100_CAL, H100_CAL))
    assert got is None and margin == MARGIN_NONE and "architecture" in note


def test_no_calibration_and_cpu():
    got, note, margin = select_calibration(H100, STACK, ())
    assert got is None and margin == MARGIN_NONE and "default" in note
    cpu = GpuSpec("cpu", 16 * GIB, vendor="cpu")
    assert select_calibration(cpu, STACK, (H100_CAL,))[0] is None
    amd = GpuSpec("MI300X-192G", 205822885888, vendor="amd")
    assert select_calibration(amd, STACK, (H100_CAL,))[0] is None


def test_user_calibration_wins_ties(tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_HOME", str(tmp_path))
    mine = CalibrationFile(gpu=H100_CAL.gpu, stack=H100_CAL.stack, fitted=TRUE.to_json())
    mine.write(user_calibration_dir() / f"{mine.slug()}.json")
    got, note, _ = select_calibration(H100, STACK)
    assert got is not None and str(tmp_path) in got.path and str(tmp_path) in note


def test_versions():
    assert version_distance("2.11.0", "2.11.0") == 0.0
    assert version_distance("2.11.0+cu130", "2.11.1") == 0.1
    assert version_distance("2.11.0", "2.8.0") == pytest.approx(0.8)
    assert version_distance("2.11.0", "3.0.0") == 1.0
    assert stack_distance(STACK, {**STACK, "torch": "2.12.0"}) == pytest.approx(8 * 0.6)


def test_slug_and_round_trip(tmp_path):
    assert H100_CAL.slug() == "nvidia-h100-80gb-hbm3-torch2.11-cuda13.0"
    path = H100_CAL.write(tmp_path / "x.json")
    back = CalibrationFile.from_json(json.loads(path.read_text()), path=str(path))
    assert back.overheads.to_json() == TRUE.to_json()


def test_bad_calibration_file_is_a_user_error():
    with pytest.raises(UserError, match="gpu"):
        CalibrationFile.from_json({"stack": {}, "fitted": {}}, path="bad.json")


# -- from a run log ----------------------------------------------------------------------------------------
def _log_lines(points: list[FitPoint]) -> str:
    lines = []
    for p in points:
        lines.append(json.dumps({
            "schema": 1, "status": "ok", "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
            "stack": STACK, "model": {"hidden_size": p.hidden_size}, "tokens": p.tokens,
            "predicted": {"peak_tensor_bytes": p.predicted_tensor_bytes},
            "measured": {"peak_allocated_bytes": p.allocated_bytes, "peak_reserved_bytes": p.reserved_bytes,
                         "peak_device_bytes": p.device_bytes}}))
    lines.append(json.dumps({"status": "oom", "gpu": "NVIDIA H100 80GB HBM3"}))
    return "\n".join(lines) + "\n"


def test_calibrate_from_log(tmp_path):
    log = tmp_path / "runs.jsonl"
    log.write_text(_log_lines(synthetic_points(12)))
    got = calibrate_from_log(log, base=None)
    assert got.gpu_name == "NVIDIA H100 80GB HBM3"
    assert got.overheads.cuda_context_bytes == pytest.approx(TRUE.cuda_context_bytes, abs=5 * MIB)
    assert len(got.measurements) == 12


def test_calibrate_from_log_refines_a_base(tmp_path):
    base = CalibrationFile(gpu=H100_CAL.gpu, stack=STACK, fitted=TRUE.to_json(),
                           measurements=[p.to_json() for p in synthetic_points(20, seed=1)])
    log = tmp_path / "runs.jsonl"
    log.write_text(_log_lines(synthetic_points(2, seed=2)))
    got = calibrate_from_log(log, base=base)
    assert len(got.measurements) == 22


def test_bad_log_line_names_file_and_line(tmp_path):
    log = tmp_path / "runs.jsonl"
    log.write_text(_log_lines(synthetic_points(3)) + "{not json\n")
    with pytest.raises(UserError, match=r"runs.jsonl:5"):
        calibrate_from_log(log)


def test_log_without_gpu_runs(tmp_path):
    log = tmp_path / "runs.jsonl"
    log.write_text(json.dumps({"status": "ok", "gpu": {"name": "cpu"}, "measured": {}}) + "\n")
    with pytest.raises(UserError, match="no run with a prediction"):
        calibrate_from_log(log)


def test_point_from_harness_result():
    rec = {"status": "ok", "config": {"name": "a", "train": {"cutoff_len": 512, "per_device_train_batch_size": 2}},
           "hidden_size": 64, "predicted": {"peak_tensor_bytes": 10},
           "peak": {"allocated_bytes": 12, "reserved_bytes": 20, "device_bytes": None}}
    p = point_from_record(rec)
    assert p == FitPoint("a", 10, 1024, 64, 12, 20, None)


def test_calibrate_command(tmp_path):
    log = tmp_path / "runs.jsonl"
    log.write_text(_log_lines(synthetic_points(6)))
    out = tmp_path / "cal.json"
    res = CliRunner().invoke(calibrate_cmd, ["--from-log", str(log), "--out", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["path"] == str(out) and out.is_file()
    res = CliRunner().invoke(calibrate_cmd, ["--from-log", str(log), "--out", str(out)])
    assert "CUDA context" in res.output


def test_every_shipped_calibration_is_valid():
    from planner.hardware.calibration import shipped_calibrations

    for c in shipped_calibrations():
        # the five constants every calibration has (the per-token slack terms are optional)
        assert set(c.fitted) >= {"cuda_context_bytes", "cublas_workspace_bytes", "kernel_temp_bytes_per_token_hidden",
                                 "allocator_slack_ratio", "allocator_slack_bytes"}, c.path
        assert c.slug() + ".json" == c.path.rsplit("/", 1)[-1], "file name must be <gpu>-<stack>.json"
        assert c.measurements and c.fit_quality.get("n", 0) >= 3, c.path
        assert c.gpu.get("memory_bytes") and c.gpu.get("compute_capability"), c.path


def test_run_log_records_of_plan_apply(tmp_path):
    """The shape runner.report / runner.runlog write: gpu.device, measured.peak_* keys, data.max_batch_shape."""
    lines = []
    for p in synthetic_points(5, seed=4):
        lines.append(json.dumps({
            "schema": 1, "status": "ok", "model": {"name": "Qwen2.5-7B", "params_total": 1},
            "config": {"cutoff_len": 4096, "per_device_train_batch_size": 1},
            "gpu": {"planned": {"name": "H100-SXM-80G"},
                    "device": {"name": "NVIDIA H100 80GB HBM3", "kind": "cuda", "compute_capability": "9.0",
                               "memory_bytes": 85520809984}},
            "data": {"max_batch_shape": [1, p.tokens]}, "stack": STACK,
            "predicted": {"peak_tensor_bytes": p.predicted_tensor_bytes},
            "measured": {"peak_tensor_bytes": p.allocated_bytes, "peak_reserved_bytes": p.reserved_bytes,
                         "peak_device_bytes": p.device_bytes}}))
    lines.append(json.dumps({"status": "ok", "gpu": {"device": {"name": "cpu", "kind": "cpu"}},
                             "predicted": {"peak_tensor_bytes": 1}, "measured": {"peak_tensor_bytes": 1}}))
    log = tmp_path / "runs.jsonl"
    log.write_text("\n".join(lines) + "\n")
    got = calibrate_from_log(log, base=None)
    assert got.gpu_name == "NVIDIA H100 80GB HBM3" and len(got.measurements) == 5
    assert {m["hidden_size"] for m in got.measurements} == {3584}  # Qwen2.5-7B, from the catalog
