"""Fake-tensor simulation (runner.simulate): equal to real tensor accounting, fast on full-size models."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tiny_models import TINY as _SHARED  # noqa: E402

from planner.model.spec import ModelSpec  # noqa: E402
from planner.train_config import TrainConfig  # noqa: E402
from runner.accounting import measure_step  # noqa: E402
from runner.build import NeedsCuda  # noqa: E402
from runner.simulate import simulate_cli, simulate_step  # noqa: E402

TINY = {  # the tiny models of test_accounting.py, plus Mistral
    **_SHARED,
    # A sliding window shorter than the rows: sdpa needs a real mask on those layers.
    "mistral": {"model_type": "mistral", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
                "max_position_embeddings": 512, "sliding_window": 32},
    # MoE: transformers 5 runs experts as grouped_mm over 3D weights, static shapes under fake tensors.
    "qwen2_moe": {"model_type": "qwen2_moe", "hidden_size": 64, "intermediate_size": 128,
                  "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
                  "max_position_embeddings": 512, "num_experts": 4, "num_experts_per_tok": 2},
}
CASES = [
    ("qwen2", TrainConfig(finetuning_type="full", dtype="fp32", gradient_checkpointing=False)),
    ("qwen2", TrainConfig(finetuning_type="freeze", dtype="fp32", amp="bf16", optim="adamw_torch_fused")),
    ("llama", TrainConfig(finetuning_type="lora", dtype="bf16", lora_dropout=0.1)),
    ("llama", TrainConfig(finetuning_type="full", dtype="bf16", attn_implementation="eager",
                          gradient_accumulation_steps=1)),
    ("gemma2", TrainConfig(finetuning_type="lora", dtype="bf16", use_dora=True, gradient_checkpointing=False)),
    ("mistral", TrainConfig(finetuning_type="lora", dtype="bf16", gradient_accumulation_steps=1)),
    ("qwen2_moe", TrainConfig(finetuning_type="full", dtype="bf16", gradient_accumulation_steps=1)),
]


def spec_of(name: str) -> ModelSpec:
    return ModelSpec.from_config(TINY[name], name=f"tiny-{name}")


def same_accounting(a, b, *, same_ops: bool = True) -> None:
    assert a.phases == b.phases
    assert a.phase_categories == b.phase_categories
    assert a.activation_bytes == b.activation_bytes
    assert a.peak_tensor_bytes == b.peak_tensor_bytes
    if same_ops:  # op counts, when both ran the same number of steps
        assert a.attention_ops == b.attention_ops


@pytest.mark.parametrize(("name", "train"), CASES, ids=[f"{n}-{t.method}-{t.dtype}" for n, t in CASES])
def test_fake_trace_equals_real_accounting(name, train):
    """Exact, byte for byte: fake tensors have the real shapes, dtypes and lifetimes."""
    kw = {"batch_size": 2, "seq_len": 64, "steps": 1, "warm_start": True}
    real, fake = measure_step(spec_of(name), train, **kw), simulate_step(spec_of(name), train, **kw)
    same_accounting(real, fake)
    assert (real.config["mode"], fake.config["mode"]) == ("cpu", "fake")


@pytest.mark.parametrize("ga", [1, 2])
def test_warm_start_holds_the_peak_of_two_real_steps(ga):
    """One warm-started step (states alive, accumulated gradients alive) = step 2 of a fresh run."""
    train = TrainConfig(finetuning_type="lora", dtype="bf16", gradient_accumulation_steps=ga)
    literal = measure_step(spec_of("qwen2"), train, batch_size=2, seq_len=32, steps=2)
    warm = measure_step(spec_of("qwen2"), train, batch_size=2, seq_len=32, steps=1, warm_start=True)
    same_accounting(literal, warm, same_ops=False)
    fake_literal = simulate_step(spec_of("qwen2"), train, batch_size=2, seq_len=32, steps=2, warm_start=False)
    same_accounting(literal, fake_literal)


def test_simulate_refuses_bitsandbytes_and_the_cli_falls_back():
    spec, qlora = spec_of("qwen2"), TrainConfig(quantization_bit=4)
    with pytest.raises(NeedsCuda):
        simulate_step(spec, qlora, batch_size=1, seq_len=16)
    out = simulate_cli(spec, qlora, 1, 16)
    assert out["ok"] is False and out["fallback"] == "analytic" and "CUDA" in out["reason"]
    ok = simulate_cli(spec, TrainConfig(gradient_accumulation_steps=1), 1, 16)
    assert ok["ok"] is True and ok["peak_tensor_bytes"] > 0
    json.dumps(ok)


# Qwen2.5-7B's config.json shapes, in case the catalog does not carry it.
QWEN25_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
             "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
             "max_position_embeddings": 32768, "tie_word_embeddings": False, "rms_norm_eps": 1e-6,
             "rope_theta": 1000000.0}

_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from planner.model.spec import ModelSpec
    from planner.train_config import TrainConfig
    from runner.simulate import simulate_step
    cfg, tiny = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    train = TrainConfig(finetuning_type="lora", gradient_checkpointing=True)
    simulate_step(ModelSpec.from_config(tiny, name="tiny"), train, batch_size=1, seq_len=16)  # imports
    t = time.process_time()
    mem = simulate_step(ModelSpec.from_config(cfg, name="Qwen2.5-7B"), train, batch_size=1, seq_len=1024)
    print(json.dumps({"cpu_seconds": time.process_time() - t, "peak": mem.peak_tensor_bytes,
                      "weights": mem.categories_at_peak["weights"],
                      "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""")


def test_7b_trace_is_fast_and_allocates_nothing():
    """Qwen2.5-7B LoRA at 1024 tokens: < 30 s, < 2 GB RSS (the bf16 weights alone are 15 GB).

    CPU seconds of the (single-threaded) trace, so a busy shared CI machine does not fail it.
    """
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(QWEN25_7B), json.dumps(TINY["qwen2"])],
                         capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["weights"] > 15e9  # the full-size model was traced
    assert got["cpu_seconds"] < 30
    assert got["rss"] < 2e9
