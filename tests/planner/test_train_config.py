"""planner.train_config: the validity rules written once, and every caller asking them."""

from __future__ import annotations

import itertools
from pathlib import Path

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


# -- memory cache keys ----------------------------------------------------------------------------------

def test_every_field_has_a_memory_role():
    """A new TrainConfig field must say how it reaches the memory model, or the caches ignore it."""
    from dataclasses import fields

    from planner.train_config import MEMORY_ROLE

    assert set(MEMORY_ROLE) == {f.name for f in fields(TrainConfig)}
    assert set(MEMORY_ROLE.values()) <= {"step", "states", "shape", "none"}


# per field: another value, and what it needs to be valid or to matter (set in the base as well)
_CHANGES = {
    "finetuning_type": ("freeze", {}), "quantization_bit": (4, {}),
    "double_quantization": (False, {"quantization_bit": 4}), "dtype": ("fp16", {}),
    "amp": ("bf16", {"dtype": "fp32"}), "cutoff_len": (1024, {}), "per_device_train_batch_size": (2, {}),
    "gradient_accumulation_steps": (1, {}), "lora_rank": (64, {}), "lora_alpha": (64, {}),
    "lora_dropout": (0.1, {}), "lora_target": (("q_proj", "v_proj"), {}), "use_dora": (True, {}),
    "freeze_trainable_layers": (5, {"finetuning_type": "freeze"}), "attn_implementation": ("eager", {}),
    "optim": ("adamw_8bit", {}), "gradient_checkpointing": (False, {}), "use_liger_kernel": (True, {}),
    "deepspeed_stage": (2, {}), "offload": ("optimizer", {"deepspeed_stage": 2}),
    "trainer": ("peft", {"quantization_bit": 4}), "stack": ("transformers==4.48", {}),
}


def _fresh():
    from planner.memory import estimate, step

    estimate._STATIC.clear()
    step._activation_model.cache_clear()


def _view(mb):
    return mb.peak_bytes, mb.phases, mb.components, mb.host_bytes, mb.notes


@pytest.mark.parametrize("field", sorted(_CHANGES))
def test_cached_estimate_equals_a_fresh_one(field):
    """Whatever was estimated before, a config's estimate is the one computed from scratch: the caches'
    keys hold every field that changes the bytes."""
    from planner.memory import estimate_memory

    spec = find_model("Qwen2.5-0.5B").spec
    setup = GpuSetup(GpuSpec("H100", 80 << 30, compute_capability="9.0"), count=1)
    value, needs = _CHANGES[field]
    base = TrainConfig(cutoff_len=512, gradient_accumulation_steps=4, **needs)
    changed = base.with_(**{field: value})
    assert changed != base
    _fresh()
    want = _view(estimate_memory(spec, changed, setup))
    _fresh()
    estimate_memory(spec, base, setup)
    assert _view(estimate_memory(spec, changed, setup)) == want


def test_changes_cover_every_field():
    from dataclasses import fields

    assert set(_CHANGES) == {f.name for f in fields(TrainConfig)}


@pytest.mark.parametrize("field", sorted(_CHANGES))
def test_step_key_keeps_what_the_replay_reads(field):
    """The replay of a config's step key is the replay of the config itself: step_key drops only fields
    the step does not read."""
    from planner.memory.step import activation_model, replay_step

    spec = find_model("Qwen2.5-0.5B").spec
    value, needs = _CHANGES[field]
    changed = TrainConfig(cutoff_len=512, **needs).with_(**{field: value})
    assert activation_model(spec, changed, "cuda", grad_scale=0.5) == replay_step(spec, changed, "cuda", grad_scale=0.5)


# -- trainer names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    TrainConfig(quantization_bit=4, double_quantization=False, cutoff_len=4096, per_device_train_batch_size=2,
                gradient_accumulation_steps=4, lora_rank=32, lora_alpha=16, lora_dropout=0.05,
                lora_target=("q_proj", "v_proj"), use_dora=True, attn_implementation="eager",
                optim="paged_adamw_8bit", gradient_checkpointing=False, use_liger_kernel=True),
    TrainConfig(finetuning_type="freeze", freeze_trainable_layers=4, attn_implementation="flash_attention_2"),
    TrainConfig(quantization_bit=8, attn_implementation="sdpa", optim="adamw_torch_fused"),
], ids=["qlora", "freeze", "int8"])
def test_llamafactory_names_read_back(config, tmp_path):
    """What the export writes under LLaMA-Factory's names, `plan --check` reads back as the same fields."""
    from planner.search.check import _Reader, parse_llamafactory
    from planner.train_config import LLAMAFACTORY_NAMES, to_llamafactory

    doc = {"model_name_or_path": "Qwen/Qwen2.5-7B", "bf16": True}
    for name, key in LLAMAFACTORY_NAMES.items():
        if key != "deepspeed":  # a DeepSpeed JSON file (test_check.py)
            doc[key] = to_llamafactory(config, name)
    _, back, _ = parse_llamafactory(_Reader(tmp_path / "train.yaml", doc, {}))
    for name in LLAMAFACTORY_NAMES:
        assert getattr(back, name) == getattr(config, name), name


def test_one_budget_for_the_estimate_and_the_search_bound():
    """The memory model and the search's lower bound read the same budget: free memory when detected."""
    from dataclasses import replace

    from planner.memory import estimate_memory
    from planner.search.objective import states_lower_bound

    spec = find_model("Qwen2.5-0.5B").spec
    card = GpuSetup(GpuSpec("H100", 80 << 30, compute_capability="9.0"))
    for setup, want in ((card, 80 << 30), (replace(card, detected=True, free_bytes=30 << 30), 30 << 30)):
        assert setup.budget_bytes == want
        assert estimate_memory(spec, TrainConfig(cutoff_len=512), setup).budget_bytes == want
        assert states_lower_bound(spec, TrainConfig(cutoff_len=512), setup).budget_bytes == want


def test_liger_patch_names_exist_for_every_supported_type():
    """Every type the planner counts Liger for has the patch the runner applies (read from liger-kernel's
    source when it is installed: importing it loads Triton, seconds)."""
    import importlib.util

    from planner.model.catalog import load_models
    from planner.model.liger import LIGER_MODEL_TYPES, liger_patch_name, liger_supports

    found = importlib.util.find_spec("liger_kernel")
    if found is None or not found.submodule_search_locations:
        pytest.skip("liger-kernel is not installed")
    source = (Path(found.submodule_search_locations[0]) / "transformers" / "monkey_patch.py").read_text()
    seen = set()
    for entry in load_models():
        if liger_supports(entry.spec):
            seen.add(entry.spec.model_type)
            assert f"def {liger_patch_name(entry.spec)}(" in source, entry.spec.name
    assert seen and seen <= LIGER_MODEL_TYPES
