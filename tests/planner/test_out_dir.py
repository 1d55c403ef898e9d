"""`--out DIR` that cannot be written: found before the work, the plan still printed, exit 2 naming the folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from planner.cli.out_dir import writable_problem


def plan(*args: str, cwd=None) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


def _bad_outs(tmp_path: Path) -> list[tuple[str, str]]:
    (tmp_path / "afile").write_text("x")
    cases = [(str(tmp_path / "afile" / "sub"), "is a file, not a folder")]
    if Path("/proc/self").exists():  # Linux: a pseudo file system nobody (root included) can write
        cases.append(("/proc/nope", "cannot create a folder in /proc"))
    return cases


def test_unwritable_out_prints_the_plan_and_exits_2(tmp_path):
    for out, reason in _bad_outs(tmp_path):
        code, stdout, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "RTX4090", "--offline", "--out", out)
        assert code == 2, (out, err)
        assert "Recommended:" in stdout  # the plan is not lost
        assert f"--out {out}" in err and reason in err
        assert "internal error" not in err and "Traceback" not in err


def test_unwritable_out_with_json_keeps_stdout_one_object(tmp_path):
    out, _ = _bad_outs(tmp_path)[0]
    code, stdout, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "RTX4090", "--offline", "--out", out,
                             "--format", "json")
    assert code == 2 and json.loads(stdout)["config"]
    assert f"--out {out}" in err


def test_unwritable_out_stops_apply_before_training(tmp_path):
    out, _ = _bad_outs(tmp_path)[0]
    code, _, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "cpu", "--offline", "--out", out, "--apply",
                        "--init", "random", "--synthetic-data", "2:16", "--max-steps", "1")
    assert code == 2 and f"--out {out}" in err and "Traceback" not in err


def test_probe_leaves_nothing_behind(tmp_path):
    assert writable_problem(tmp_path / "new" / "deeper") is None
    assert writable_problem(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc")
def test_probe_names_the_reason():
    assert "No such file or directory" in writable_problem(Path("/proc/nope"))
