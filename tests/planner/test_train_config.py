"""planner.train_config: the validity rules written once, and every caller asking them."""

from __future__ import annotations

import itertools

import pytest

from planner.cli.memory_options import train_config_from_options
from planner.errors import UserError
from planner.hardware.gpu_spec import GpuSetup, GpuSpec
from planner.memory.zero import model_states
from planner.model.catalog import find_model
from planner.search.space import build_space, config_for, valid_stage
from planner.train_config import BNB_OPTIMIZERS, TrainConfig, conflicts


@pytest.mark.parametrize("opts, message", [
    ({"quant": "4", "method": "full"}, "--quant 4 --method full: bitsandbytes quantization trains LoRA adapters only."),
    ({"method": "freeze", "lora_rank": 8, "dora": True},
     "--lora-rank 8 --dora with --method freeze: LoRA settings need --method lora or qlora."),
    ({"amp": "fp16"}, "--amp fp16 with --dtype bf16: autocast mixed precision needs fp32 weights."),
    ({"offload": "optimizer"}, "--offload optimizer without --zero: offloading is a DeepSpeed ZeRO feature."),
    ({"zero": 2, "offload": "params"}, "--offload params --zero 2: only ZeRO-3 partitions parameters."),
    ({"quant": "4", "zero": 3}, "--quant 4 --zero 3: ZeRO-3 cannot partition bitsandbytes weights."),
    ({"optim": "paged_adamw_32bit", "zero": 1}, "--optim paged_adamw_32bit --zero 1: DeepSpeed runs its own "
     "optimizer on the fp32 partitions; bitsandbytes optimizers are not supported there."),
])
def test_flag_errors_keep_their_wording(opts, message):
    with pytest.raises(UserError) as err:
        train_config_from_options(opts, TrainConfig())
    assert err.value.message == message and err.value.hint


def test_lora_settings_refused_only_when_given():
    full = TrainConfig(finetuning_type="full")
    assert conflicts(full) == ()  # the default lora_rank of a full config is not the user's
    (c,) = conflicts(full, given={"lora_rank", "cutoff_len"})
    assert c.fields == ("lora_rank", "finetuning_type")


_GRID = [TrainConfig(finetuning_type=ft, quantization_bit=bits, deepspeed_stage=stage, offload=off, optim=optim,
                     dtype="fp32" if ft == "full" else "bf16", amp="bf16" if ft == "full" else None)
         for ft, bits, stage, off, optim in itertools.product(
             ("lora", "full"), (None, 4), (0, 1, 2, 3), ("none", "optimizer", "params"),
             ("adamw_torch", "adamw_8bit", "paged_adamw_32bit"))]


@pytest.mark.parametrize("config", _GRID, ids=lambda c: f"{c.method}-z{c.deepspeed_stage}-{c.offload}-{c.optim}")
def test_flags_memory_model_and_search_agree(config):
    """The command line, the ZeRO memory model and the search refuse the same ZeRO combinations."""
    zero_rules = [c for c in conflicts(config) if {"deepspeed_stage", "offload"} & set(c.fields)
                  and "optim" not in c.fields]
    opts = {"method": config.method, "quant": str(config.quantization_bit or "none"),
            "zero": config.deepspeed_stage, "offload": config.offload,
            "optim": config.optim, "dtype": config.dtype, "amp": config.amp}
    try:
        train_config_from_options(opts, TrainConfig())
        flags_ok = True
    except UserError:
        flags_ok = False
    assert flags_ok == (not conflicts(config))
    setup = GpuSetup(GpuSpec("H100", 80 << 30, compute_capability="9.0"), count=2)
    spec = find_model("Qwen2.5-0.5B").spec
    if zero_rules:
        with pytest.raises(UserError) as err:
            model_states(spec, config, setup)
        assert err.value.message == zero_rules[0].message
    else:
        model_states(spec, config, setup)
    assert valid_stage(config.deepspeed_stage, config.offload, config.quantization_bit) == (not zero_rules)


def test_search_proposes_no_conflicting_family():
    setup = GpuSetup(GpuSpec("H100", 80 << 30, compute_capability="9.0"), count=4)
    space = build_space(find_model("Qwen2.5-7B").spec, setup, None, pinned={}, target_batch=None)
    assert any(f.optim in BNB_OPTIMIZERS for f in space.families)
    assert any(f.deepspeed_stage for f in space.families)
    for fam in space.families:
        assert conflicts(config_for(space, fam, 1024, 1, setup.world_size)) == (), fam.label
