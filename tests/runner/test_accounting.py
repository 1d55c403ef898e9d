"""Tensor accounting (runner.accounting): exact byte counts on tiny real models, table-driven."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tiny_models import TINY  # noqa: E402

from planner.model.spec import ModelSpec  # noqa: E402
from planner.train_config import TrainConfig  # noqa: E402
from runner.accounting import CATEGORIES, make_tracker, measure_step  # noqa: E402
from runner.build import NeedsCuda, build_model  # noqa: E402

SDPA = ("qwen2", "llama")  # transformers has no sdpa path for Gemma-2


def spec_of(name: str) -> ModelSpec:
    return ModelSpec.from_config(TINY[name], name=f"tiny-{name}")


def unique_bytes(tensors) -> int:
    """Bytes of distinct storages (tied weights once)."""
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("method", ["full", "lora", "freeze"])
def test_load_phase_counts_parameters_and_buffers_exactly(name, method):
    train = TrainConfig(finetuning_type=method, dtype="bf16", gradient_accumulation_steps=1)
    mem = measure_step(spec_of(name), train, batch_size=1, seq_len=16, steps=1)
    torch.manual_seed(0)
    model = build_model(spec_of(name), train)
    params = list(model.parameters())
    load = mem.phase_categories["load"]
    assert load["trainable"] == unique_bytes(p for p in params if p.requires_grad)
    assert load["weights"] == unique_bytes([p for p in params if not p.requires_grad] + list(model.buffers()))
    assert load["inputs"] == 2 * 16 * 8  # input_ids and labels, int64
    assert mem.phases["load"] == sum(load.values())


def test_views_and_in_place_ops_do_not_count_twice():
    lin = torch.nn.Linear(4, 4)
    tracker = make_tracker(lin, torch.optim.SGD(lin.parameters(), lr=0.1))
    with tracker:
        x = torch.zeros(1000)
        base = tracker.live_bytes
        y = x.view(10, 100)
        x.add_(1.0)
        y.mul_(2.0)
        z = x[::2]
        assert tracker.live_bytes == base
        w = x * 2  # a new storage
        assert tracker.live_bytes == base + 4000
        del w
        assert tracker.live_bytes == base
        del x, y, z
        assert tracker.live_bytes == base - 4000


@pytest.mark.parametrize(("name", "optim"), [*((n, "adamw_torch") for n in TINY),
                                             ("qwen2", "adamw_torch_forloop"), ("qwen2", "adamw_torch_fused")])
def test_full_fp32_adamw_states_are_two_copies_plus_a_step_per_tensor(name, optim):
    train = TrainConfig(finetuning_type="full", dtype="fp32", optim=optim, gradient_checkpointing=False,
                        gradient_accumulation_steps=1)
    mem = measure_step(spec_of(name), train, batch_size=1, seq_len=16, steps=2)
    torch.manual_seed(0)
    n_tensors = len(list(build_model(spec_of(name), train).parameters()))  # tied weights: one Parameter
    at_step = mem.steps[1]["phase_categories"]["optimizer"]  # step 2, gradients still alive
    trainable = at_step["trainable"]
    assert at_step["gradients"] == trainable
    # torch AdamW: exp_avg and exp_avg_sq like the parameter, plus a float32 scalar `step` per tensor
    assert at_step["optimizer_state"] == 2 * trainable + 4 * n_tensors
    # Step 2 runs forward with the states of step 1 alive; gradients were set to None in between.
    fwd2 = mem.steps[1]["phase_categories"]["forward"]
    assert fwd2["optimizer_state"] == 2 * trainable + 4 * n_tensors
    assert mem.steps[0]["phase_categories"]["forward"]["optimizer_state"] == 0


@pytest.mark.parametrize("name", list(TINY))
def test_nothing_escapes_the_tracker(name):
    train = TrainConfig(finetuning_type="lora", dtype="bf16", gradient_accumulation_steps=2)
    mem = measure_step(spec_of(name), train, batch_size=1, seq_len=16, steps=2)
    for step in mem.steps:
        for cats in step["phase_categories"].values():
            assert cats["other"] == 0
            assert set(cats) == set(CATEGORIES)
    assert mem.peak_tensor_bytes == max(mem.phases.values())
    assert mem.peak_tensor_bytes == sum(mem.categories_at_peak.values())
    json.dumps(mem.to_json())


def _activations(name: str, attn: str, seq_len: int) -> int:
    train = TrainConfig(finetuning_type="full", dtype="fp32", attn_implementation=attn,
                        gradient_checkpointing=False, gradient_accumulation_steps=1)
    return measure_step(spec_of(name), train, batch_size=2, seq_len=seq_len, steps=1, warm_start=True
                        ).activation_bytes


@pytest.mark.parametrize("name", SDPA)
def test_sdpa_activations_grow_linearly_with_sequence(name):
    a64, a128, a256 = (_activations(name, "sdpa", s) for s in (64, 128, 256))
    assert a128 / a64 == pytest.approx(2, rel=1e-3)
    assert a256 / a64 == pytest.approx(4, rel=1e-3)


@pytest.mark.parametrize("name", list(TINY))
def test_eager_activations_grow_superlinearly(name):
    # eager keeps the (b, heads, s, s) attention probabilities for backward
    a64, a256 = _activations(name, "eager", 64), _activations(name, "eager", 256)
    assert a256 / a64 > 4.4


@pytest.mark.parametrize("name", SDPA)
def test_cpu_sdpa_uses_the_flash_kernel(name):
    train = TrainConfig(finetuning_type="lora", gradient_accumulation_steps=1)
    mem = measure_step(spec_of(name), train, batch_size=1, seq_len=32, steps=1, warm_start=True)
    assert "_scaled_dot_product_flash_attention_for_cpu" in mem.attention_ops
    assert "_scaled_dot_product_flash_attention_for_cpu_backward" in mem.attention_ops


@pytest.mark.parametrize("name", list(TINY))
def test_lora_adapters_are_fp32_on_a_bf16_base(name):
    train = TrainConfig(finetuning_type="lora", dtype="bf16", lora_rank=4, gradient_accumulation_steps=1)
    mem = measure_step(spec_of(name), train, batch_size=1, seq_len=16, steps=1, warm_start=True)
    trainable, _ = build_model(spec_of(name), train, device="meta").get_nb_trainable_parameters()
    assert mem.phase_categories["load"]["trainable"] == trainable * 4
    assert mem.phase_categories["optimizer"]["gradients"] == trainable * 4


def test_freeze_trains_the_last_layers_only():
    train = TrainConfig(finetuning_type="freeze", freeze_trainable_layers=1, dtype="bf16")
    model = build_model(spec_of("qwen2"), train, device="meta")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in n for n in names)


@pytest.mark.parametrize("changes", [{"quantization_bit": 8}, {"optim": "adamw_8bit"},
                                     {"optim": "paged_adamw_32bit"}, {"use_liger_kernel": True},
                                     {"deepspeed_stage": 2}, {"deepspeed_stage": 3, "offload": "optimizer"}])
def test_what_only_runs_on_a_gpu_is_refused(changes):
    with pytest.raises(NeedsCuda, match="analytic model"):
        measure_step(spec_of("qwen2"), TrainConfig(**changes), batch_size=1, seq_len=16)


def test_4bit_runs_on_the_cpu_and_only_there():
    """bitsandbytes >= 0.48 runs NF4 on the CPU: the oracle measures QLoRA (tests/runner/test_gates.py); a
    k-bit load for another device still says it needs the CUDA path (build_model(kbit="swap") swaps layers)."""
    from runner.build import cpu_4bit_available

    if not cpu_4bit_available():
        with pytest.raises(NeedsCuda, match="bitsandbytes"):
            measure_step(spec_of("qwen2"), TrainConfig(quantization_bit=4), batch_size=1, seq_len=16)
        return
    mem = measure_step(spec_of("qwen2"), TrainConfig(quantization_bit=4), batch_size=1, seq_len=16)
    assert mem.categories_at_peak["other"] == 0  # the QuantState tensors are counted as weights
    with pytest.raises(NeedsCuda, match="bitsandbytes"):
        build_model(spec_of("qwen2"), TrainConfig(quantization_bit=4), device="meta")
