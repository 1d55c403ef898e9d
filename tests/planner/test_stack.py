"""--stack and the installed versions: what the software stack changes in a plan (planner/stack.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from planner.errors import UserError
from planner.hardware.gpus import resolve_setup
from planner.memory import estimate_memory
from planner.memory.weights import weight_bytes
from planner.model.catalog import find_model
from planner.model.params import linear_layers
from planner.stack import experts_quantized, parse_stack, stack_versions
from planner.train_config import TrainConfig


def test_parse_and_resolve():
    assert parse_stack("transformers==4.57, trl==0.21") == (("transformers", "4.57"), ("trl", "0.21"))
    assert stack_versions("transformers==4.57")["transformers"] == "4.57"
    assert not experts_quantized("transformers==5.0") and experts_quantized("transformers==4.57")
    for bad in ("transformers=4.57", "numpy==2.0", "transformers==latest"):
        with pytest.raises(UserError, match="--stack"):
            parse_stack(bad)


def test_bad_stack_flag_is_exit_2():
    proc = subprocess.run([sys.executable, "-m", "planner", "--model", "Qwen2.5-7B", "--gpu", "RTX4090",
                           "--stack", "transformers=4.57"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "PACKAGE==VERSION" in proc.stderr and "Traceback" not in proc.stderr


def test_moe_qlora_on_transformers_5_keeps_experts_16_bit_and_says_so_loudly():
    spec = find_model("Mixtral-8x7B").spec
    setup = resolve_setup("H100")
    t5 = TrainConfig(quantization_bit=4, cutoff_len=1024, stack="transformers==5.25")
    t4 = t5.with_(stack="transformers==4.57")
    experts = sum(x.in_features * x.out_features * x.per_layer * x.layers for x in linear_layers(spec) if x.expert)
    w5, w4 = weight_bytes(spec, t5), weight_bytes(spec, t4)
    # transformers 5: the experts' bf16 bytes stay; transformers 4: they are NF4 (half a byte + constants)
    assert w5.other_bytes - w4.other_bytes == experts * 2
    assert experts // 2 <= w4.quantized_bytes - w5.quantized_bytes <= experts // 2 + 8 * 32
    notes = " ".join(estimate_memory(spec, t5, setup).notes)
    assert notes.startswith("!! MoE + QLoRA") and "--stack transformers==4.57" in notes
    assert "!! MoE" not in " ".join(estimate_memory(spec, t4, setup).notes)
    # a dense model is the same on both
    dense = find_model("Qwen2.5-7B").spec
    assert weight_bytes(dense, t5) == weight_bytes(dense, t4)


def test_old_transformers_and_old_trl_are_said():
    spec = find_model("Qwen2.5-7B").spec
    setup = resolve_setup("RTX4090")
    notes = " ".join(estimate_memory(spec, TrainConfig(quantization_bit=4, trainer="trl",
                                                       stack="transformers==4.46,trl==0.21"), setup).notes)
    assert "#35646" in notes and "prepare_model_for_kbit_training" in notes
