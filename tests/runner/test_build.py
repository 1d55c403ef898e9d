"""runner.build, the one model builder of `plan --apply`, the CPU oracles and the GPU benchmarks."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from tiny_models import TINY  # noqa: E402

from planner.model.spec import ModelSpec  # noqa: E402
from planner.train_config import TrainConfig  # noqa: E402
from runner.build import NeedsCuda, apply_liger, build_model, cpu_4bit_available  # noqa: E402


def spec_of(name: str) -> ModelSpec:
    return ModelSpec.from_config(TINY[name], name=f"tiny-{name}")


def layout(model) -> dict[str, tuple]:
    return {n: (tuple(p.shape), p.dtype, p.requires_grad, type(p).__name__) for n, p in model.named_parameters()}


@pytest.mark.skipif(not cpu_4bit_available(), reason="bitsandbytes < 0.48 has no CPU 4-bit")
@pytest.mark.parametrize("trainer", ["llamafactory", "peft"])
def test_swapped_4bit_build_is_the_loaded_one(trainer):
    """The benchmarks' fast k-bit build (Linears swapped in place) holds the same parameters, dtypes and
    trainable set as the checkpoint-like load `plan --apply --init random` and the oracle use."""
    train = TrainConfig(quantization_bit=4, finetuning_type="lora", lora_rank=4, dtype="bf16", trainer=trainer)
    loaded = build_model(spec_of("qwen2"), train, device="cpu")
    swapped = build_model(spec_of("qwen2"), train, device="cpu", kbit="swap")
    assert layout(swapped) == layout(loaded)
    kinds = {type(m).__name__ for m in swapped.modules()}
    assert "Linear4bit" in kinds and getattr(swapped, "is_loaded_in_4bit", False)


def test_swap_is_for_lora_only():
    with pytest.raises(ValueError, match="LoRA"):
        build_model(spec_of("qwen2"), TrainConfig(quantization_bit=4, finetuning_type="full"), device="cpu",
                    kbit="swap")


def test_8bit_load_needs_cuda():
    with pytest.raises(NeedsCuda, match="8-bit"):
        build_model(spec_of("qwen2"), TrainConfig(quantization_bit=8), device="cpu")


def test_attention_given_is_built_as_given(monkeypatch):
    """`plan --apply` on CUDA passes the attention it resolved (flash_attention_2 when flash-attn is installed);
    the build used to turn it into sdpa (the CPU stand-in) while the report said flash_attention_2."""
    from transformers import AutoModelForCausalLM

    built = []
    original = AutoModelForCausalLM.from_config

    def record(cfg, **kwargs):
        built.append(kwargs["attn_implementation"])
        return original(cfg, **{**kwargs, "attn_implementation": "sdpa"})  # flash-attn is not installed here

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", record)
    build_model(spec_of("qwen2"), TrainConfig(), device="meta", attn="flash_attention_2")
    build_model(spec_of("qwen2"), TrainConfig(attn_implementation="flash_attention_2"), device="meta")
    assert built == ["flash_attention_2", "sdpa"]  # given: as is; from the plan: resolved for a CPU build


def test_liger_only_on_cuda():
    notes: list[str] = []
    assert not apply_liger(spec_of("qwen2"), TrainConfig(use_liger_kernel=False), "cuda", notes) and not notes
    assert not apply_liger(spec_of("qwen2"), TrainConfig(use_liger_kernel=True), "cpu", notes)
    assert notes == ["use_liger_kernel: Liger's Triton kernels need CUDA; trained without them on the CPU"]
