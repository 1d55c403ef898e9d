"""plan.yaml keeps data paths that work from any folder, and its errors name plan.yaml, not a flag."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from planner.errors import UserError
from planner.exports.plan_file import PlanFile

ROWS = [{"instruction": f"say {i}", "input": "", "output": "word " * (5 + i)} for i in range(8)]


def plan(*args: str, cwd=None) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture()
def planned(tmp_path):
    """`plan --data small.json --out o` run inside a/, the way the README shows it."""
    a = tmp_path / "a"
    a.mkdir()
    (a / "small.json").write_text(json.dumps(ROWS), encoding="utf-8")
    code, _, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "cpu", "--offline", "--data", "small.json",
                        "--out", "o", cwd=a)
    assert code == 0, err
    return a


def test_plan_yaml_stores_resolved_data_paths(planned):
    import yaml

    raw = yaml.safe_load((planned / "o" / "plan.yaml").read_text())
    assert raw["data"]["data"] == [str((planned / "small.json").resolve())]


def test_saved_plan_reads_its_data_from_another_folder(planned, tmp_path, monkeypatch):
    from planner.data import DataRequest
    from runner.dataset import data_request

    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    saved = PlanFile.load(Path("..") / "a" / "o" / "plan.yaml")
    saved.check_data_paths()
    request = data_request(saved, DataRequest)
    from planner.data.loaders import resolve_sources

    assert [s.path for s in resolve_sources(request.data)] == [planned / "small.json"]


def test_relative_path_in_a_plan_file_is_read_next_to_it(tmp_path, monkeypatch):
    folder = tmp_path / "moved"
    folder.mkdir()
    (folder / "small.json").write_text(json.dumps(ROWS), encoding="utf-8")
    (folder / "plan.yaml").write_text(
        "model: Qwen2.5-0.5B\ngpu: cpu\nconfig: {finetuning_type: lora}\ndata: {data: [small.json]}\n")
    monkeypatch.chdir(tmp_path)
    saved = PlanFile.load(folder / "plan.yaml")
    assert saved.data["data"] == [str((folder / "small.json").resolve())]
    saved.check_data_paths()


def test_missing_data_names_the_plan_file_not_a_flag(tmp_path, monkeypatch):
    (tmp_path / "plan.yaml").write_text(
        "model: Qwen2.5-0.5B\ngpu: cpu\nconfig: {finetuning_type: lora}\ndata: {data: [gone.json]}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        PlanFile.load(tmp_path / "plan.yaml").check_data_paths()
    assert str(tmp_path / "plan.yaml") in err.value.message and "data.data gone.json" in err.value.message
    assert "--data" not in err.value.message

