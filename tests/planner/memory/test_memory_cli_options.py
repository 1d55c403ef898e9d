"""planner.cli.memory_options: flags -> TrainConfig, and errors that name the flag."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from planner.cli.memory_options import memory_options, train_config_from_options
from planner.errors import UserError
from planner.train_config import TrainConfig


@click.command()
@memory_options
def _cmd(**opts):
    click.echo(repr(opts))


def _parse(*args: str) -> dict:
    seen = {}

    @click.command()
    @memory_options
    def cmd(**opts):
        seen.update(opts)

    result = CliRunner().invoke(cmd, list(args))
    assert result.exit_code == 0, result.output
    return seen


def test_all_flags_default_to_not_pinned():
    opts = _parse()
    assert opts and all(v is None for v in opts.values())
    assert train_config_from_options(opts, TrainConfig()) == TrainConfig()


def test_flags_pin_fields():
    opts = _parse("--method", "qlora", "--cutoff", "4096", "--batch-size", "2", "--grad-accum", "4",
                  "--lora-rank", "32", "--lora-target", "q_proj,v_proj", "--lora-dropout", "0.05", "--dora",
                  "--attn", "eager", "--optim", "paged_adamw_8bit", "--no-grad-ckpt", "--liger")
    c = train_config_from_options(opts, TrainConfig())
    assert c.method == "qlora" and c.quantization_bit == 4
    assert (c.cutoff_len, c.per_device_train_batch_size, c.gradient_accumulation_steps) == (4096, 2, 4)
    assert c.lora_rank == 32 and c.lora_target == ("q_proj", "v_proj") and c.use_dora
    assert c.attn_implementation == "eager" and c.optim == "paged_adamw_8bit"
    assert c.gradient_checkpointing is False and c.use_liger_kernel is True


def test_method_and_quant_combine():
    assert train_config_from_options({"method": "qlora", "quant": "8"}, TrainConfig()).quantization_bit == 8
    assert train_config_from_options({"method": "lora"}, TrainConfig(quantization_bit=4)).quantization_bit is None
    assert train_config_from_options({"quant": "4"}, TrainConfig()).method == "qlora"
    full = train_config_from_options({"method": "full", "dtype": "fp32", "amp": "bf16", "zero": 3,
                                      "offload": "params"}, TrainConfig())
    assert (full.finetuning_type, full.amp, full.deepspeed_stage, full.offload) == ("full", "bf16", 3, "params")


@pytest.mark.parametrize("opts, flag", [
    ({"quant": "4", "method": "full"}, "--quant 4 --method full"),
    ({"method": "qlora", "quant": "none"}, "--method qlora --quant none"),
    ({"method": "freeze", "lora_rank": 8}, "--lora-rank 8"),
    ({"amp": "bf16"}, "--amp bf16"),
    ({"offload": "optimizer"}, "--offload optimizer"),
    ({"zero": 2, "offload": "params"}, "--offload params"),
    ({"quant": "4", "zero": 3}, "--quant 4 --zero 3"),
    ({"optim": "adamw_8bit", "zero": 2}, "--optim adamw_8bit"),
    ({"lora_target": "all,q_proj"}, "--lora-target"),
])
def test_bad_combinations_name_the_flags(opts, flag):
    with pytest.raises(UserError) as err:
        train_config_from_options(opts, TrainConfig())
    assert flag in str(err.value)


def test_click_rejects_bad_values():
    result = CliRunner().invoke(_cmd, ["--zero", "4"])
    assert result.exit_code != 0 and "--zero" in result.output
