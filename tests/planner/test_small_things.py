"""Small things a new user trips over: one epochs default, CPU wording, stale exports, plain table values."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml


def plan(*args: str, cwd=None) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("data", [(), ("--data", "demo")])
def test_one_epochs_value_in_the_plan_its_exports_and_apply(tmp_path, data):
    from planner.cli import _plan_file
    from planner.cli.request import request_from_options
    from planner.pipeline import run_plan

    out = tmp_path / "o"
    code, stdout, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "RTX4090", "--offline", *data, "--out", str(out),
                             "--format", "json")
    assert code == 0, err
    shown = json.loads(stdout)["hparams"]["num_train_epochs"]
    assert yaml.safe_load((out / "plan.yaml").read_text())["training"]["num_train_epochs"] == shown
    assert yaml.safe_load((out / "llamafactory.yaml").read_text())["num_train_epochs"] == shown
    assert json.loads((out / "training_arguments.json").read_text())["num_train_epochs"] == shown
    options = {"data": tuple(data[1:]), "fmt": "json"}
    report = run_plan(request_from_options(options, model="Qwen2.5-0.5B", gpu="RTX4090"))
    assert _plan_file(report, options).training["num_train_epochs"] == shown  # what `plan ... --apply` trains


def test_epochs_help_names_the_plan_default():
    code, out, _ = plan("--help")
    assert "default 1;" not in out and "num_train_epochs" in out
    assert "plan.yaml" in out.split("--out DIR", 1)[1][:300]  # --out is not only for --apply


def test_cpu_plans_speak_of_the_cpu():
    code, out, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "cpu", "--offline")
    assert code == 0, err
    flat = " ".join(out.split())
    assert "one GPU" not in flat and "the card supports" not in flat and "all GPUs" not in flat
    assert "the CPU: one process" in flat


def test_adamw_torch_on_the_cpu_is_planned_as_the_for_loop(tmp_path):
    code, out, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "cpu", "--offline", "--optim", "adamw_torch",
                          "--format", "json", "--out", str(tmp_path / "o"))
    assert code == 0, err
    obj = json.loads(out)
    assert obj["train_config"]["optim"] == "adamw_torch_forloop"
    assert any("for-loop" in n for n in obj["notes"])
    # the exports keep the TrainingArguments name (torch picks the for-loop on the CPU itself)
    assert yaml.safe_load((tmp_path / "o" / "llamafactory.yaml").read_text())["optim"] == "adamw_torch"
    code, out, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "H100", "--offline", "--optim", "adamw_torch",
                          "--format", "json")
    assert json.loads(out)["train_config"]["optim"] == "adamw_torch"  # foreach on CUDA


def test_force_removes_exports_the_new_plan_does_not_write(tmp_path):
    out = tmp_path / "o"
    code, _, err = plan("--model", "Qwen2.5-7B", "--gpu", "H100", "--gpus", "8", "--zero", "3", "--offline",
                        "--out", str(out))
    assert code == 0, err
    assert (out / "deepspeed.json").is_file()
    code, _, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "H100", "--offline", "--out", str(out), "--force")
    assert code == 0, err
    assert not (out / "deepspeed.json").exists()
    assert "deepspeed" not in (out / "llamafactory.yaml").read_text()
    (out / "plan.yaml").unlink()
    (out / "deepspeed.json").write_text("{}")  # only a stale file left: still a clash without --force
    for name in list(out.iterdir()):
        if name.name != "deepspeed.json":
            name.unlink()
    code, _, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "H100", "--offline", "--out", str(out))
    assert code == 2 and "deepspeed.json" in err and "--force" in err


def test_template_model_offline_is_the_default(tmp_path):
    code, out, err = plan("--model", "Qwen2.5-7B", "--data", "demo", "--gpu", "RTX4090", "--offline",
                          "--template", "model", "--format", "json")
    assert code == 0, err
    _, default, _ = plan("--model", "Qwen2.5-7B", "--data", "demo", "--gpu", "RTX4090", "--offline", "--format",
                         "json")
    assert json.loads(out)["data"]["cutoff_len"] == json.loads(default)["data"]["cutoff_len"]


def test_tables_show_plain_values_not_python_reprs():
    code, out, err = plan("--model", "Qwen2.5-7B", "--gpu", "RTX4090", "--offline", "--fixed", "--method", "lora")
    assert code in (0, 1), err
    import re

    cells = re.findall(r"│ *([^│]*?) *(?=│)", out)
    assert "lora_target" in cells  # the configuration table is there
    for repr_ in ("None", "True", "False", "('all',)"):
        assert repr_ not in cells, repr_


def test_one_epoch_is_singular():
    code, out, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "H100", "--offline", "--data", "demo", "--epochs", "1")
    assert code == 0, err
    flat = " ".join(out.split())
    assert "1 epochs" not in flat and "1 epoch " in flat


def test_unknown_dataset_lists_the_entries(tmp_path):
    info = {name: {"file_name": f"{name}.json"} for name in ("alpaca_en", "glaive_toolcall", "identity")}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    code, _, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "H100", "--offline", "--dataset", "nosuch",
                        "--dataset-dir", str(tmp_path))
    assert code == 2 and "alpaca_en, glaive_toolcall, identity" in err
