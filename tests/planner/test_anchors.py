"""Each anchor against figures computed by hand from its published source."""

from __future__ import annotations

import pytest

from planner.memory import anchors
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig
from planner.units import GIB, MIB

LLAMA2_7B = ModelSpec.from_config({
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
    "max_position_embeddings": 4096, "tie_word_embeddings": False,
}, name="Llama-2-7b-hf")


def test_accelerate_rows():
    # estimate_training_usage: fp32 "step" = 4 x fp32 size; bf16 "optimizer" = 2 x fp32 size.
    assert anchors.accelerate_training_bytes(7_000_000_000, "fp32") == 112_000_000_000
    assert anchors.accelerate_training_bytes(7_000_000_000, "bf16") == 56_000_000_000
    assert anchors.accelerate_training_bytes(7_000_000_000, "int4") is None


def test_deepspeed_zero2():
    p = 7_000_000_000
    assert anchors.deepspeed_zero2_gpu_bytes(p, num_gpus=1) == 140_000_000_000  # 2P + 18P
    assert anchors.deepspeed_zero2_gpu_bytes(p, num_gpus=8) == 14_000_000_000 + 15_750_000_000
    assert anchors.deepspeed_zero2_gpu_bytes(p, num_gpus=8, cpu_offload=True) == 14_000_000_000


def test_deepspeed_zero3():
    p, largest = 7_000_000_000, 32000 * 4096
    assert anchors.deepspeed_zero3_gpu_bytes(p, largest, num_gpus=8) == 524_288_000 + 15_750_000_000
    assert anchors.deepspeed_zero3_gpu_bytes(p, largest, num_gpus=8, cpu_offload=True) == 524_288_000 + 1_750_000_000
    assert anchors.deepspeed_zero3_gpu_bytes(p, largest, num_gpus=8, cpu_offload=True,
                                             cpu_offload_params=True) == 524_288_000


@pytest.mark.parametrize(("row", "params", "gib"), [
    ("lora16", 7e9, 16),  # table cell
    ("lora16", 10.5e9, 24),  # halfway 7B (16) -> 14B (32)
    ("lora16", 3.5e9, 8),  # below 7B: the 7B cell scaled by size
    ("qlora4", 140e9, 96),  # above 70B: the 70B cell scaled by size
    ("full_amp", 30e9, 600),
    ("full_pure_bf16", 50e9, 450),  # 30B (300) -> 70B (600), halfway
])
def test_llamafactory_table(row, params, gib):
    assert anchors.llamafactory_table_bytes(row, int(params)) == pytest.approx(gib * GIB, rel=1e-9)


def test_llamafactory_rows():
    assert anchors.llamafactory_row(TrainConfig(finetuning_type="full", dtype="fp32", amp="bf16")) == "full_amp"
    assert anchors.llamafactory_row(TrainConfig(finetuning_type="full", dtype="bf16")) == "full_pure_bf16"
    assert anchors.llamafactory_row(TrainConfig(quantization_bit=4)) == "qlora4"
    assert anchors.llamafactory_row(TrainConfig(finetuning_type="freeze")) == "lora16"


def test_gpu_poor_lora_by_hand():
    # Llama-2-7B shape, LoRA, Adam, s=512, b=1, no checkpointing (src/App.js):
    # params = 32000*4096*2 + 32*4*4096^2 + 32*3*11008*4096 = 6,738,149,376 -> model 12852.0 MB
    # activations per layer: attn 100,663,296 + ffn 76,021,760 + norm 25,169,920 B; x32 -> 6160.125 MB
    # grads+Adam (LoRA rule): 32*8*4096*2*4*3*2 B = 48 MB; + 650 MB overhead -> 19710.125 MB
    got = anchors.gpu_poor_training_bytes(vocab=32000, hidden=4096, heads=32, intermediate=11008, layers=32,
                                          seq_len=512, batch=1, method="lora", gradient_checkpointing=False)
    assert got == int(19710.125 * MIB)


def test_gpu_poor_qlora_by_hand():
    # QLoRA, s=2048, checkpointing (x0.15): model 12852/4 - P*2/64MiB + 0.06*12852 = 3783.3075 MB,
    # activations 7382.475 MB, grads+opt 939.75 MB (incl. 0.75*common*50*sqrt(2048/50)), + 650
    got = anchors.gpu_poor_training_bytes(vocab=32000, hidden=4096, heads=32, intermediate=11008, layers=32,
                                          seq_len=2048, batch=1, method="qlora", gradient_checkpointing=True)
    assert got == pytest.approx(12755.5325 * MIB, rel=1e-9)


def test_guide_rule():
    # weights + 2.5 GB per 1K tokens (0.6 with Liger)
    assert anchors.guide_per_1k_tokens_bytes(10 * GIB, 2000, liger=False) == 15 * GIB
    assert anchors.guide_per_1k_tokens_bytes(10 * GIB, 1000, liger=True) == 10 * GIB + int(0.6 * GIB)


def test_anchors_for_lora_7b():
    train = TrainConfig(finetuning_type="lora", lora_rank=8, cutoff_len=512, per_device_train_batch_size=1,
                        gradient_checkpointing=False)
    got = anchors.anchors_for(LLAMA2_7B, train)
    assert set(got) == set(anchors.ANCHORS)
    total = 6_738_415_616  # Llama-2-7B exact parameter count (norms included)
    assert got["accelerate"] == 8 * total
    assert got["llamafactory"] == anchors.llamafactory_table_bytes("lora16", total)
    assert got["gpu_poor"] == int(19710.125 * MIB)
    # LoRA r=8 on all 7 projections: 32 layers x 8 x (4 x (4096+4096) + 3 x (4096+11008)) = 19,988,480
    assert got["deepspeed"] == 20 * 19_988_480
    assert got["guide_2p5gb_per_1k"] == 2 * total + int(2.5 * GIB * 512 / 1000)


def test_anchors_for_qlora_has_no_accelerate_row():
    got = anchors.anchors_for(LLAMA2_7B, TrainConfig(quantization_bit=4, cutoff_len=1024))
    assert got["accelerate"] is None
    assert got["llamafactory"] == anchors.llamafactory_table_bytes("qlora4", 6_738_415_616)
    assert got["gpu_poor"] is not None
