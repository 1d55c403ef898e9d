"""`--check`: an existing LLaMA-Factory / Axolotl YAML against a GPU."""

from __future__ import annotations

import io
import json

import pytest
from search_helpers import setup

from planner.errors import UserError
from planner.search.check import check_config

LF_YAML = """\
### model
model_name_or_path: Qwen/Qwen2.5-7B-Instruct
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,alpaca_en_demo
template: qwen
cutoff_len: {cutoff}
max_samples: 1000

### output
output_dir: saves/qwen2.5-7b/lora/sft
logging_steps: 10
plot_loss: true

### train
per_device_train_batch_size: {batch}
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
"""


def _write(tmp_path, text, name="train.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_small_config_fits(tmp_path, estimator):
    path = _write(tmp_path, LF_YAML.format(cutoff=1024, batch=1))
    result = check_config(path, setup("H100"), estimator=estimator)
    assert result.flavor == "llamafactory" and result.model.name == "Qwen2.5-7B-Instruct"
    assert result.fits and result.exit_code == 0
    c = result.config
    assert (c.finetuning_type, c.lora_rank, c.lora_alpha, c.cutoff_len, c.gradient_accumulation_steps) == \
        ("lora", 8, 16, 1024, 8)
    assert c.gradient_checkpointing and c.dtype == "bf16"
    json.dumps(result.to_json())


def test_too_big_config_says_what_to_change(tmp_path, estimator):
    path = _write(tmp_path, LF_YAML.format(cutoff=8192, batch=16))
    result = check_config(path, setup("RTX4090"), estimator=estimator)
    assert not result.fits and result.exit_code == 1
    assert result.changes or result.suggestion
    keys = {k for k, _, _ in result.changes}
    assert keys & {"per_device_train_batch_size", "quantization_bit", "enable_liger_kernel", "deepspeed"}
    from rich.console import Console

    buf = io.StringIO()
    result.render(Console(file=buf, width=120))
    assert "does not fit" in buf.getvalue() and "Change:" in buf.getvalue()


def test_warns_about_keys_llamafactory_would_refuse(tmp_path, estimator):
    path = _write(tmp_path, LF_YAML.format(cutoff=1024, batch=1) + "lora_rnak: 16\n")
    result = check_config(path, setup("H100"), estimator=estimator)
    assert any("lora_rnak" in w and "not a LLaMA-Factory argument" in w and f"{path}:" in w
               for w in result.warnings)
    assert any(w.startswith(f"{path}:29: 'warmup_ratio' exists only in transformers 4.x") for w in result.warnings)


def test_bad_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "model_name_or_path: x\nlora_rank: [1,\n")
    with pytest.raises(UserError, match=r"train\.yaml:\d+"):
        check_config(path, setup("H100"))


def test_bad_value_names_the_key_line(tmp_path, estimator):
    text = LF_YAML.format(cutoff=1024, batch=1).replace("lora_rank: 8", "lora_rank: eight")
    path = _write(tmp_path, text)
    with pytest.raises(UserError, match=r"train\.yaml:9: lora_rank"):
        check_config(path, setup("H100"), estimator=estimator)


def test_unknown_model_names_the_line(tmp_path, estimator):
    path = _write(tmp_path, LF_YAML.format(cutoff=1024, batch=1).replace("Qwen/Qwen2.5-7B-Instruct", "nope-13x"))
    with pytest.raises(UserError, match=r"train\.yaml:2"):
        check_config(path, setup("H100"), estimator=estimator)


def test_deepspeed_reference_is_read(tmp_path, estimator):
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer":
                                                                         {"device": "cpu"}}}))
    text = LF_YAML.format(cutoff=1024, batch=1).replace("finetuning_type: lora", "finetuning_type: full\n"
                                                        "deepspeed: ds.json")
    result = check_config(_write(tmp_path, text), setup("H100", 8), estimator=estimator)
    assert (result.config.deepspeed_stage, result.config.offload) == (3, "optimizer")
    assert result.config.finetuning_type == "full" and result.config.amp == "bf16"


AXOLOTL_YAML = """\
base_model: meta-llama/Llama-3.1-8B
load_in_4bit: true
adapter: qlora
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true
sequence_len: 4096
sample_packing: true
micro_batch_size: 2
gradient_accumulation_steps: 4
num_epochs: 1
optimizer: paged_adamw_8bit
learning_rate: 0.0002
bf16: auto
gradient_checkpointing: true
flash_attention: true
datasets:
  - path: mhenrichsen/alpaca_2k_test
    type: alpaca
"""


def test_axolotl_config(tmp_path, estimator):
    result = check_config(_write(tmp_path, AXOLOTL_YAML, "axolotl.yaml"), setup("RTX4090"), estimator=estimator)
    c = result.config
    assert result.flavor == "axolotl" and result.model.name == "Llama-3.1-8B"
    assert (c.method, c.quantization_bit, c.lora_rank, c.cutoff_len, c.per_device_train_batch_size) == \
        ("qlora", 4, 32, 4096, 2)
    assert c.attn_implementation == "flash_attention_2" and c.optim == "paged_adamw_8bit"


def test_limit_is_shown_from_the_free_memory_it_was_computed_on(tmp_path, estimator):
    """On a detected card the budget is its free memory (GpuSetup.budget_bytes): the line says so."""
    from dataclasses import replace

    from rich.console import Console

    path = _write(tmp_path, LF_YAML.format(cutoff=1024, batch=1))
    busy = replace(setup("H100"), detected=True, free_bytes=40 << 30)
    result = check_config(path, busy, estimator=estimator)
    assert result.memory.budget_bytes == 40 << 30 and result.limit_bytes == int((40 << 30) * 0.95)
    buf = io.StringIO()
    result.render(Console(file=buf, width=1000))
    assert "limit 38.0 GiB = 40.0 GiB - 5%" in buf.getvalue(), buf.getvalue()
