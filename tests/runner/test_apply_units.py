"""The torch-free parts of --apply: plan.yaml, the click options, the run log, next-smaller configs, comparison."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from planner.cli.apply import apply_kwargs, apply_options, apply_requested, resolve_plan
from planner.errors import UserError
from planner.exports.plan_file import PlanFile, parse_synthetic
from planner.hardware.gpu_spec import GpuSetup, GpuSpec
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig
from runner.oom import candidates, next_smaller, resumable
from runner.report import compare, human_bytes
from runner.runlog import append_run, read_runs, runlog_path

QWEN = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256}
SPEC = ModelSpec.from_config(QWEN, name="tiny")
GIB = 1 << 30


def _raw(**config) -> dict:
    return {"model": {"name": "Qwen2.5-0.5B"}, "gpu": {"name": "RTX4090"},
            "config": {"finetuning_type": "lora", "lora_target": "q_proj,v_proj", **config},
            "data": {"synthetic": "8:64"}}


def test_plan_file_round_trip(tmp_path):
    plan = PlanFile.from_dict(_raw(quantization_bit=4, lora_rank=16))
    assert plan.config.method == "qlora" and plan.config.lora_target == ("q_proj", "v_proj")
    assert plan.synthetic == (8, 64) and plan.training["init"] == "pretrained"
    path = plan.save(tmp_path / "plan.yaml")
    again = PlanFile.load(tmp_path)  # a folder means its plan.yaml
    assert again.config == plan.config and again.to_dict() == plan.to_dict()
    assert again.model_spec().name == "Qwen2.5-0.5B"
    assert again.gpu_setup().gpu.name.startswith("RTX 4090") or "4090" in again.gpu_setup().gpu.name
    assert path.read_text().startswith("vramplan_version:")


def test_plan_file_from_values_keeps_the_card_parsable():
    setup = GpuSetup(GpuSpec(name="24GB card", memory_bytes=24 * GIB, vendor="generic"), count=2)
    plan = PlanFile.from_values(SPEC, TrainConfig(cutoff_len=512), setup, data={"data": ["a.json"]},
                                training={"max_steps": 5})
    assert plan.gpu["name"] == "24GB" and plan.gpu["count"] == 2
    assert plan.gpu_setup().gpu.memory_bytes == 24 * GIB
    assert plan.training["max_steps"] == 5 and plan.training["learning_rate"] == 1e-4


def test_cpu_plans_may_have_several_processes():
    raw = _raw()
    raw["gpu"] = {"name": "cpu", "count": 2}
    setup = PlanFile.from_dict(raw).gpu_setup()
    assert setup.gpu.is_cpu and setup.world_size == 2


@pytest.mark.parametrize("change, match", [
    ({"config": {"lora_rnk": 8}}, "config.lora_rnk is not a training setting"),
    ({"config": {"lora_rank": "big"}}, "config.lora_rank"),
    ({"config": {"gradient_checkpointing": "yes"}}, "config.gradient_checkpointing"),
    ({"gpu": {"name": "H100", "count": 0}}, "gpu.count"),
    ({"training": {"epochs": 2}}, "training.epochs is not a run setting"),
    ({"model": {}}, "model needs"),
])
def test_plan_file_errors_name_the_key(change, match):
    raw = _raw()
    raw.update(change)
    with pytest.raises(UserError, match=match):
        PlanFile.from_dict(raw, where="p.yaml")


def test_plan_file_bad_yaml_names_the_line(tmp_path):
    (tmp_path / "plan.yaml").write_text("model:\n  name: x\ngpu: [\n")
    with pytest.raises(UserError, match=r"plan.yaml:\d+: invalid YAML"):
        PlanFile.load(tmp_path / "plan.yaml")
    with pytest.raises(UserError, match="no such plan file"):
        PlanFile.load(tmp_path / "missing.yaml")


def test_parse_synthetic():
    assert parse_synthetic("64:512") == (64, 512)
    for bad in ("64", "0:10", "a:b", "4:1"):
        with pytest.raises(UserError, match="--synthetic-data"):
            parse_synthetic(bad)


def test_apply_options_parse_into_apply_plan_kwargs(tmp_path):
    seen = {}

    @click.command()
    @apply_options
    def cmd(**params):
        seen.update(params)

    runner = CliRunner()
    assert runner.invoke(cmd, ["--apply", "--out", str(tmp_path), "--max-steps", "3", "--synthetic-data",
                               "4:32", "--init", "random", "--retry"]).exit_code == 0
    assert seen["apply"] == "" and apply_requested(seen)
    plan = PlanFile.from_dict(_raw())
    kw = apply_kwargs(seen, plan)
    assert kw["max_steps"] == 3 and kw["synthetic"] == (4, 32) and kw["init"] == "random" and kw["retry"]
    assert str(kw["out_dir"]) == str(tmp_path) and kw["force"] is False
    assert resolve_plan(seen, plan) is plan
    with pytest.raises(UserError, match="no plan to apply"):
        resolve_plan(seen, None)
    seen.clear()
    assert runner.invoke(cmd, ["--apply", "runs/a/plan.yaml"]).exit_code == 0
    assert seen["apply"] == "runs/a/plan.yaml"
    seen.clear()
    assert runner.invoke(cmd, []).exit_code == 0 and not apply_requested(seen)
    assert apply_kwargs(seen, plan)["out_dir"].name == "Qwen2.5-0.5B-lora"


def test_plan_file_and_options_import_no_torch():
    code = ("import sys, planner.exports.plan_file, planner.cli.apply, runner.runlog, runner.oom, runner.distributed; "
            "print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_runlog_appends_json_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_HOME", str(tmp_path / "home"))
    assert runlog_path() == tmp_path / "home" / "runs.jsonl"
    append_run({"status": "ok", "measured": {"peak_tensor_bytes": 1}, "loss": {"train": []}})
    append_run({"status": "oom", "measured": {"peak_tensor_bytes": 2}})
    with runlog_path().open("a") as fh:
        fh.write("{broken\n")
    runs = list(read_runs())
    assert [r["status"] for r in runs] == ["ok", "oom"] and "loss" not in runs[0] and runs[0]["schema"] == 1


def test_next_smaller_picks_the_first_change_that_fits_with_margin(monkeypatch):
    monkeypatch.setattr("runner.build.liger_supported", lambda spec: True)  # importing liger imports torch
    setup = GpuSetup(GpuSpec(name="card", memory_bytes=100, vendor="generic"))
    train = TrainConfig(per_device_train_batch_size=4, gradient_checkpointing=False)
    labels = [label for label, _ in candidates(SPEC, train, device="cpu")]
    assert labels[0] == "enable gradient checkpointing" and "halve the micro-batch 4 -> 2" in labels[1]

    def predict(t):  # checkpointing alone: 95 (fits only without margin); halving too: 60
        return (95 if t.gradient_checkpointing else 150) * (0.6 if t.per_device_train_batch_size < 4 else 1)

    step = next_smaller(SPEC, train, setup, device="cpu", measured_bytes=110, predicted_bytes=100,
                        predict=predict)
    # ratio 1.1 x margin 1.1: checkpointing (95 -> 115) does not fit, halving the batch (90 -> 109) does not,
    # so both: 57 -> 69
    assert step.confident and step.train.gradient_checkpointing and step.train.per_device_train_batch_size == 2
    assert step.train.gradient_accumulation_steps == 16
    assert next_smaller(SPEC, train, setup, device="cpu", measured_bytes=None, predicted_bytes=None).changes == (
        "enable gradient checkpointing",)
    tiny = TrainConfig(cutoff_len=128)
    assert next_smaller(SPEC, tiny, setup, device="cpu", measured_bytes=1, predicted_bytes=1) is None
    cuda = [label for label, _ in candidates(SPEC, tiny, device="cuda")]
    assert any("4-bit" in c for c in cuda) and any("8-bit AdamW" in c for c in cuda)
    assert any("Liger" in c for c in cuda)
    assert resumable(train, train.with_(per_device_train_batch_size=1))
    assert not resumable(train, train.with_(finetuning_type="full"))


def test_compare_keeps_common_keys_and_relative_errors():
    prediction = {"peak_tensor_bytes": 110, "peak_bytes": 200, "phases": {"forward": 90, "load": 40},
                  "components": {"weights": 50, "lora": 3}}
    measured = {"peak_tensor_bytes": 100, "peak_reserved_bytes": 120, "peak_device_bytes": 250,
                "phases": {"forward": 100, "backward": 100}, "components": {"weights": 50}}
    pred, meas, err = compare(prediction, measured)
    assert pred == {"peak_tensor_bytes": 110, "peak_device_bytes": 200, "phases": {"forward": 90},
                    "components": {"weights": 50}}
    assert set(meas) == {"peak_tensor_bytes", "peak_reserved_bytes", "peak_device_bytes", "phases", "components"}
    assert err["peak_tensor_bytes"] == 0.1 and err["peak_device_bytes"] == -0.2 and err["phases"]["forward"] == -0.1
    assert compare(None, measured)[0] == {}
    assert human_bytes(3 * GIB) == "3.000 GiB" and human_bytes(2048) == "2.00 KiB" and json.dumps(err)
