"""planner.memory: the analytic model's arithmetic, API and invariants (no torch needed)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from planner.errors import UserError
from planner.hardware.gpu_spec import GpuSetup, GpuSpec
from planner.memory import estimate_memory
from planner.memory.trainable import trainable_state
from planner.memory.weights import nf4_bytes, weight_bytes
from planner.model.catalog import find_model
from planner.model.params import count_params, linear_layers
from planner.train_config import TrainConfig
from planner.units import GIB

H100 = GpuSetup(GpuSpec("H100", 80 * GIB, compute_capability="9.0"))
CPU = GpuSetup(GpuSpec("cpu", 64 * GIB, vendor="cpu"))


@pytest.fixture(scope="module")
def qwen7b():
    return find_model("Qwen2.5-7B").spec


def test_json_shape_and_invariants(qwen7b):
    mb = estimate_memory(qwen7b, TrainConfig(cutoff_len=2048), H100)
    js = mb.to_json()
    for key in ("components", "phases", "peak_tensor_bytes", "peak_bytes", "budget_bytes", "fits", "host_bytes",
                "activations_per_1k_tokens"):
        assert key in js
    assert set(js["phases"]) == {"load", "forward", "backward", "optimizer"}
    assert mb.peak_tensor_bytes == max(mb.phases.values())
    assert sum(mb.components.values()) == mb.peak_bytes  # components are the peak phase, overheads included
    assert mb.peak_bytes > mb.peak_tensor_bytes  # a GPU adds context and workspaces
    assert set(js["activations_per_1k_tokens"]) == {"plain", "grad_ckpt", "liger", "liger_grad_ckpt"}
    assert mb.fits and mb.headroom_bytes == mb.budget_bytes - mb.peak_bytes


def test_cpu_setup_has_no_device_overheads(qwen7b):
    mb = estimate_memory(qwen7b, TrainConfig(cutoff_len=512), CPU)
    assert mb.peak_bytes == mb.peak_tensor_bytes
    assert not {"cuda_context", "cublas_workspace", "allocator_slack"} & set(mb.components)


def test_calibrated_overheads_replace_defaults(qwen7b):
    from planner.hardware.calibration import DeviceOverheads

    oh = DeviceOverheads(cuda_context_bytes=1 << 30, cublas_workspace_bytes=0, source="test card")
    mb = estimate_memory(qwen7b, TrainConfig(cutoff_len=512), H100, overheads=oh)
    assert mb.peak_bytes == mb.peak_tensor_bytes + (1 << 30)
    assert mb.overheads_source == "test card"


def test_nf4_golden():
    # 4096 x 4096: 8 MiB of packed codes, 262144 blocks of 64
    assert nf4_bytes(4096 * 4096, double_quant=False) == (8388608, 262144 * 4 + 64)
    packed, const = nf4_bytes(4096 * 4096, double_quant=True)
    assert packed == 8388608 and const == 262144 + 1024 * 4 + 1028 + 64
    # double quantization: ~0.127 bit/param of constants (QLoRA paper) instead of 0.5
    assert 0.12 < const * 8 / (4096 * 4096) < 0.135


def test_qlora_weights_follow_the_trainers_recipe(qwen7b):
    linear = sum(x.weight_numel for x in linear_layers(qwen7b) if x.module_linear)
    # peft's prepare_model_for_kbit_training (the `peft` recipe) upcasts embeddings, norms and lm_head to fp32
    w = weight_bytes(qwen7b, TrainConfig(quantization_bit=4, trainer="peft"))
    assert w.other_bytes == (count_params(qwen7b).total - linear) * 4
    # LLaMA-Factory (the default), Axolotl and TRL >= 0.23 keep them in the 16-bit compute dtype
    for trainer in ("llamafactory", "axolotl", "trl"):
        w = weight_bytes(qwen7b, TrainConfig(quantization_bit=4, trainer=trainer))
        assert w.other_bytes == (count_params(qwen7b).total - linear) * 2, trainer
    assert 4.3e9 < 2 * 152064 * 3584 * 4 < 4.4e9  # MEMORY-NOTES: ~4.4 GB for Qwen2.5-7B's two tables
    w8 = weight_bytes(qwen7b, TrainConfig(quantization_bit=8))
    assert w8.quantized_bytes == linear  # LLM.int8: one byte per weight


def test_lora_trainable_params_match_peft(qwen7b):
    # peft print_trainable_parameters() for these configs
    assert trainable_state(qwen7b, TrainConfig(lora_rank=8)).params == 20_185_088
    llama = find_model("Llama-3.1-8B").spec
    st = trainable_state(llama, TrainConfig(lora_rank=16, lora_target=("q_proj", "v_proj")))
    assert st.params == 6_815_744
    # fp32 adapters: weights 4 + grads 4 + AdamW states 8 bytes per parameter (+ a float32 step each)
    assert st.adapter_bytes == st.gradient_bytes == 4 * st.params
    assert st.optimizer_state_bytes == 8 * st.params + 4 * 2 * 2 * 32


def test_full_finetuning_states(qwen7b):
    p = count_params(qwen7b).total
    st = trainable_state(qwen7b, TrainConfig(finetuning_type="full"))
    assert st.params == p and st.gradient_bytes == 2 * p
    assert st.optimizer_temp_bytes == 2 * p  # foreach: one copy of exp_avg_sq (sqrt)
    fused = trainable_state(qwen7b, TrainConfig(finetuning_type="full", optim="adamw_torch_fused"))
    assert fused.optimizer_temp_bytes == 0
    eight = trainable_state(qwen7b, TrainConfig(finetuning_type="full", optim="adamw_8bit"))
    assert 2 * p < eight.optimizer_state_bytes < 2.1 * p


def test_zero_partitions_model_states(qwen7b):
    train = TrainConfig(finetuning_type="full", cutoff_len=1024, gradient_checkpointing=True)
    by_stage = {}
    for stage in (1, 2, 3):
        setup = GpuSetup(H100.gpu, count=8)
        by_stage[stage] = estimate_memory(qwen7b, train.with_(deepspeed_stage=stage), setup).phases["optimizer"]
    assert by_stage[1] > by_stage[2] > by_stage[3]
    one = estimate_memory(qwen7b, train.with_(deepspeed_stage=3), GpuSetup(H100.gpu, count=1)).phases["optimizer"]
    assert one > 4 * by_stage[3]


def test_offload_moves_states_to_host(qwen7b):
    train = TrainConfig(finetuning_type="full", cutoff_len=1024, deepspeed_stage=2)
    setup = GpuSetup(H100.gpu, count=2, host_ram_bytes=64 * GIB)
    gpu_only = estimate_memory(qwen7b, train, setup)
    off = estimate_memory(qwen7b, train.with_(offload="optimizer"), setup)
    assert off.peak_bytes < gpu_only.peak_bytes and off.host_bytes > 0
    assert off.host_bytes > 64 * GIB and not off.fits  # 16 bytes/param of host state does not fit in 64 GiB


@pytest.mark.parametrize("changes, flag", [
    ({"offload": "optimizer"}, "--offload"),
    ({"offload": "params", "deepspeed_stage": 2}, "--offload params"),
    ({"lora_target": ("q_proj", "wq")}, "--lora-target"),
])
def test_user_errors_name_the_flag(qwen7b, changes, flag):
    with pytest.raises(UserError, match=flag):
        estimate_memory(qwen7b, TrainConfig(**changes), H100)


def test_gemma2_has_no_sdpa():
    spec = find_model("gemma-2-2b").spec
    with pytest.raises(UserError, match="--attn sdpa"):
        estimate_memory(spec, TrainConfig(attn_implementation="sdpa"), H100)
    assert estimate_memory(spec, TrainConfig(cutoff_len=1024), H100).peak_bytes > 0  # eager by default


def test_activation_levers_order(qwen7b):
    base = TrainConfig(cutoff_len=4096, gradient_checkpointing=False)
    plain = estimate_memory(qwen7b, base, H100).peak_tensor_bytes
    ckpt = estimate_memory(qwen7b, base.with_(gradient_checkpointing=True), H100).peak_tensor_bytes
    liger = estimate_memory(qwen7b, base.with_(use_liger_kernel=True), H100).peak_tensor_bytes
    eager = estimate_memory(qwen7b, base.with_(attn_implementation="eager"), H100).peak_tensor_bytes
    assert ckpt < plain and liger < plain and eager > plain
    per_1k = estimate_memory(qwen7b, base, H100).activations_per_1k_tokens()
    assert per_1k["plain"] > per_1k["grad_ckpt"] > per_1k["liger_grad_ckpt"]
    assert per_1k["plain"] > per_1k["liger"] > per_1k["liger_grad_ckpt"]


def test_seq_lens_and_accumulation(qwen7b):
    train = TrainConfig(cutoff_len=4096, per_device_train_batch_size=8)
    mb = estimate_memory(qwen7b, train, H100, seq_lens=(100, 700, 300))
    assert (mb.batch_size, mb.seq_len, mb.tokens) == (3, 700, 2100)  # padded to the longest sample
    one = estimate_memory(qwen7b, train.with_(gradient_accumulation_steps=1), H100, seq_lens=(700,))
    many = estimate_memory(qwen7b, train.with_(gradient_accumulation_steps=4), H100, seq_lens=(700,))
    assert many.phase_components["forward"]["gradients"] > 0 == one.phase_components["forward"]["gradients"]


def test_fast_enough_for_the_search(qwen7b):
    estimate_memory(qwen7b, TrainConfig(), H100)
    start = time.perf_counter()
    for n in range(500):
        estimate_memory(qwen7b, TrainConfig(cutoff_len=512 + n, per_device_train_batch_size=1 + n % 4), H100)
    per_call = (time.perf_counter() - start) / 500
    assert per_call < 2e-3, f"{per_call * 1e6:.0f} us per call"


def test_render(qwen7b):
    from rich.console import Console

    from planner.memory import render_memory

    console = Console(record=True, width=120)
    render_memory(estimate_memory(qwen7b, TrainConfig(quantization_bit=4, cutoff_len=2048), H100), console)
    text = console.export_text()
    assert "weights" in text and "peak" in text and "Fits" in text and "per 1K tokens" in text


def test_planner_memory_imports_no_torch():
    code = ("import sys, planner.memory, planner.cli.memory_options, planner.memory.render; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'peft', 'deepspeed', 'bitsandbytes')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
