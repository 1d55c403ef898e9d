"""Exports: every file parses, uses only names its tool accepts, and agrees with the plan."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
import yaml
from search_helpers import setup, spec

from planner.errors import UserError
from planner.exports import render_exports, write_exports
from planner.exports.llamafactory import llamafactory_keys
from planner.exports.plan_file import PlanFile
from planner.search import search

# (model, (card, count, nodes), pinned)
SCENARIOS = {
    "lora-24g": ("Qwen2.5-7B", ("RTX4090", 1, 1), {}),
    "qlora-24g": ("Qwen2.5-7B", ("RTX4090", 1, 1), {"quantization_bit": 4}),
    "int8": ("Llama-3.1-8B", ("A100-80G", 1, 1), {"quantization_bit": 8}),
    "full-8x80": ("Qwen2.5-7B", ("H100", 8, 1), {"finetuning_type": "full"}),
    "full-offload": ("Qwen2.5-1.5B", ("RTX4090", 1, 1), {"finetuning_type": "full", "deepspeed_stage": 3,
                                                         "offload": "optimizer"}),
    "freeze-pure": ("Qwen2.5-1.5B", ("H100", 1, 1), {"finetuning_type": "freeze", "dtype": "bf16"}),
    "two-nodes": ("Qwen2.5-72B", ("H100", 8, 2), {}),
}

# Axolotl config names used by the exporter, checked against its schema (axolotl-ai-cloud/axolotl,
# src/axolotl/utils/schemas/{config,model,peft,training,datasets}.py) and the Liger plugin's args.
AXOLOTL_KEYS = {
    "base_model", "trust_remote_code", "load_in_4bit", "load_in_8bit", "adapter", "lora_r", "lora_alpha",
    "lora_dropout", "lora_target_linear", "lora_target_modules", "peft_use_dora", "datasets", "chat_template",
    "sequence_len", "sample_packing", "pad_to_sequence_len", "group_by_length", "micro_batch_size",
    "gradient_accumulation_steps", "num_epochs", "optimizer", "lr_scheduler", "learning_rate", "warmup_steps",
    "bf16", "fp16", "tf32", "gradient_checkpointing", "gradient_checkpointing_kwargs", "sdp_attention",
    "flash_attention", "val_set_size", "output_dir", "train_on_inputs", "logging_steps", "saves_per_epoch",
    "deepspeed", "plugins", "liger_rope", "liger_rms_norm", "liger_glu_activation",
    "liger_fused_linear_cross_entropy",
}


@pytest.fixture(scope="module")
def plans(estimator, data):
    out = {}
    for name, (model, (card, n, nodes), pinned) in SCENARIOS.items():
        out[name] = search(spec(model), setup(card, n, nodes), data, pinned=pinned, estimator=estimator)
    return out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_llamafactory_yaml(plans, name, tmp_path):
    plan = plans[name]
    files = render_exports(plan, tmp_path, data_ref={"data": ["train.jsonl"]})
    doc = yaml.safe_load(files["llamafactory.yaml"])
    unknown = set(doc) - llamafactory_keys()
    assert not unknown, unknown
    c = plan.config
    assert doc["cutoff_len"] == c.cutoff_len
    assert doc["per_device_train_batch_size"] == c.per_device_train_batch_size
    assert doc["gradient_accumulation_steps"] == c.gradient_accumulation_steps
    assert doc["learning_rate"] == plan.hparams.learning_rate
    assert doc["finetuning_type"] == c.finetuning_type
    assert doc.get("quantization_bit") == c.quantization_bit
    assert doc.get("disable_gradient_checkpointing", False) == (not c.gradient_checkpointing)
    assert doc.get("enable_liger_kernel", False) == c.use_liger_kernel
    assert isinstance(doc["warmup_steps"], int)
    assert ("deepspeed" in doc) == bool(c.deepspeed_stage) == ("deepspeed.json" in files)
    if c.is_lora:
        assert (doc["lora_rank"], doc["lora_alpha"], doc["lora_target"]) == (c.lora_rank, c.lora_alpha, "all")
    assert ("pure_bf16" in doc) == (name == "freeze-pure")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_deepspeed_json(plans, name, tmp_path):
    plan = plans[name]
    files = render_exports(plan, tmp_path)
    if not plan.config.deepspeed_stage:
        assert "deepspeed.json" not in files
        return
    ds = json.loads(files["deepspeed.json"])
    zero = ds["zero_optimization"]
    assert zero["stage"] == plan.config.deepspeed_stage
    assert ("offload_optimizer" in zero) == (plan.config.offload in ("optimizer", "params"))
    assert ("offload_param" in zero) == (plan.config.offload == "params")
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # filled by the HF integration


def test_deepspeed_accepts_the_zero_section(plans, tmp_path):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    for plan in plans.values():
        files = render_exports(plan, tmp_path)
        if "deepspeed.json" in files:
            zero = json.loads(files["deepspeed.json"])["zero_optimization"]
            # transformers' HfTrainerDeepSpeedConfig replaces "auto" with numbers before DeepSpeed reads it
            DeepSpeedZeroConfig(**{k: (5e8 if v == "auto" else v) for k, v in zero.items()})


def test_plan_yaml_reloads_to_the_same_config(plans, tmp_path):
    for name, plan in plans.items():
        out = tmp_path / name
        write_exports(plan, out, data_ref={"data": ["demo"], "template": "qwen"})
        back = PlanFile.load(out / "plan.yaml")
        assert back.train_config() == plan.config, name
        assert back.gpu["count"] == plan.setup.count and back.gpu["nodes"] == plan.setup.nodes
        assert back.training["learning_rate"] == plan.hparams.learning_rate
        assert back.data == {"data": ["demo"], "template": "qwen"}
        assert back.model_spec().name == plan.model.name


def test_existing_files_need_force(plans, tmp_path):
    plan = plans["lora-24g"]
    write_exports(plan, tmp_path)
    with pytest.raises(UserError) as err:
        write_exports(plan, tmp_path)
    assert "--out" in str(err.value) and "--force" in str(err.value)
    assert write_exports(plan, tmp_path, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        write_exports(plan, tmp_path / "file")


@pytest.mark.parametrize("name,expect", [
    ("lora-24g", "\nllamafactory-cli train llamafactory.yaml\n"),
    ("full-8x80", "FORCE_TORCHRUN=1 NPROC_PER_NODE=8 llamafactory-cli train llamafactory.yaml"),
    ("two-nodes", "FORCE_TORCHRUN=1 NNODES=2 NPROC_PER_NODE=8 NODE_RANK=$NODE_RANK"),
])
def test_launch_script(plans, name, expect, tmp_path):
    written = write_exports(plans[name], tmp_path)
    script = tmp_path / "launch.sh"
    assert script in written and script.stat().st_mode & 0o111
    text = script.read_text()
    assert expect in text
    if plans[name].setup.nodes > 1:
        assert "MASTER_ADDR" in text and "NODE_RANK" in text
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_axolotl_yaml(plans, tmp_path):
    for plan in plans.values():
        doc = yaml.safe_load(render_exports(plan, tmp_path)["axolotl.yaml"])
        assert set(doc) <= AXOLOTL_KEYS, set(doc) - AXOLOTL_KEYS
        assert doc["sequence_len"] == plan.config.cutoff_len
        assert doc["micro_batch_size"] == plan.config.per_device_train_batch_size
        if plan.config.is_lora:
            assert doc["adapter"] == ("qlora" if plan.config.quantization_bit == 4 else "lora")


def test_hf_json_files(plans, tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    for plan in plans.values():
        files = render_exports(plan, tmp_path)
        args = json.loads(files["training_arguments.json"])
        assert set(args) <= fields, set(args) - fields
        assert "evaluation_strategy" not in args and "torch_dtype" not in files["model_kwargs.json"]
        assert ("lora_config.json" in files) == plan.config.is_lora
        if plan.config.is_lora:
            cfg = peft.LoraConfig(**json.loads(files["lora_config.json"]))
            assert cfg.r == plan.config.lora_rank
        assert ("bnb_config.json" in files) == bool(plan.config.quantization_bit)
        if plan.config.quantization_bit:
            bnb = transformers.BitsAndBytesConfig(**json.loads(files["bnb_config.json"]))
            assert (bnb.load_in_4bit, bnb.load_in_8bit) == (plan.config.quantization_bit == 4,
                                                            plan.config.quantization_bit == 8)


def test_local_files_are_registered_for_llamafactory(plans, tmp_path):
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "hi", "input": "", "output": "hello"}]))
    chats = tmp_path / "c.jsonl"
    chats.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"},
                                                   {"from": "gpt", "value": "hello"}]}) + "\n")
    out = tmp_path / "out"
    write_exports(plans["lora-24g"], out, data_ref={"data": [str(alpaca), str(chats)]})
    info = json.loads((out / "dataset_info.json").read_text())
    lf = yaml.safe_load((out / "llamafactory.yaml").read_text())
    names = lf["dataset"].split(",")
    assert set(names) == set(info) and lf["dataset_dir"] == str(out.resolve())
    by_file = {v["file_name"]: v for v in info.values()}
    assert by_file[str(alpaca.resolve())].get("formatting", "alpaca") == "alpaca"
    assert by_file[str(chats.resolve())]["formatting"] == "sharegpt"


def test_llamafactory_parser_accepts_the_file(plans, tmp_path, monkeypatch):
    """With LLaMA-Factory installed, its own parser reads the export (keys and values)."""
    pytest.importorskip("llamafactory")
    monkeypatch.setenv("DISABLE_VERSION_CHECK", "1")
    from llamafactory.hparams import get_train_args

    doc = yaml.safe_load(render_exports(plans["lora-24g"], tmp_path)["llamafactory.yaml"])
    doc.pop("bf16", None)  # no bf16 GPU here
    doc["output_dir"] = str(tmp_path / "lf")
    get_train_args(doc)
