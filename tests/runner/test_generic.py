"""The generic path against the oracles, its cache, config compatibility and its bad-input messages.

Tiny configs (hidden 64, a few layers, a 512-token vocabulary) of families without an analytic model:
the planner's estimate (fitted traces of a shortened copy, scaled to full depth) against the fake-tensor
simulation of the whole model at a length it never traced.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from planner.errors import UserError  # noqa: E402
from planner.hardware.gpus import resolve_setup  # noqa: E402
from planner.memory import estimate_memory  # noqa: E402
from planner.model.params import count_params  # noqa: E402
from planner.model.resolve import resolve_model  # noqa: E402
from planner.train_config import TrainConfig  # noqa: E402

BASE = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)
TINY = {
    # dense (OLMo-3: OLMo-2 layers with sliding-window layers interleaved; the window exceeds the rows)
    "olmo3": dict(BASE, model_type="olmo3", num_hidden_layers=4),
    # interleaved sliding + global attention (3:1), two layer kinds
    "exaone4": dict(BASE, model_type="exaone4", num_hidden_layers=4, head_dim=16, sliding_window=256),
    # MoE with fused 3-D experts (peft wraps them and the router too)
    "olmoe": dict(BASE, model_type="olmoe", num_hidden_layers=3, intermediate_size=32, num_experts=4,
                  num_experts_per_tok=2),
}
# interleaved full + checkpointing at batch 2 peaks in the recompute of a middle layer with most gradients
# alive: the per-layer backward windows (runner.generic_trace._windows) hold it (head and tail alone: -5%)
CASES = [("olmo3", "lora", True), ("olmo3", "lora", False), ("olmo3", "full", False),
         ("exaone4", "lora", False), ("exaone4", "full", True), ("olmoe", "lora", False)]


def _folder(tmp_path, config: dict):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize(("family", "method", "gc"), CASES)
def test_generic_estimate_matches_fake_tensor_trace(tmp_path, family, method, gc):
    from runner.simulate import simulate_step

    spec = resolve_model(_folder(tmp_path, TINY[family]))
    assert spec.generic is not None
    train = TrainConfig(finetuning_type=method, gradient_checkpointing=gc, cutoff_len=192, per_device_train_batch_size=2,
                        gradient_accumulation_steps=1, optim="adamw_torch_fused")
    predicted = estimate_memory(spec, train, resolve_setup("cpu", gpus=None, nodes=1))
    traced = simulate_step(spec, train, batch_size=2, seq_len=192)
    assert predicted.peak_tensor_bytes == pytest.approx(traced.peak_tensor_bytes, rel=0.02)
    for phase in ("forward", "backward"):
        assert predicted.phases[phase] == pytest.approx(traced.phases[phase], rel=0.02), phase


def test_generic_counts_and_lora_match_the_build(tmp_path):
    from runner.build import build_model

    spec = resolve_model(_folder(tmp_path, TINY["olmoe"]))
    model = build_model(spec, TrainConfig(lora_rank=4), device="meta")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    from planner.memory.trainable import trainable_state

    assert trainable_state(spec, TrainConfig(lora_rank=4)).params == trainable
    assert count_params(spec).total == sum(p.numel() for p in model.parameters()) - trainable
    assert count_params(spec).experts > 0 and count_params(spec).router > 0


def test_second_plan_reads_the_cache_without_torch(tmp_path):
    (tmp_path / "m").mkdir()
    folder = _folder(tmp_path / "m", TINY["olmo3"])
    code = ("import sys\nfrom planner.cli import main\n"
            f"try:\n    main(['--model', {folder!r}, '--gpu', 'H100', '--fixed', '--method', 'lora', "
            "'--format', 'json'])\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\n")
    env = {"VRAMPLAN_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": ":".join(sys.path)}
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "TORCH True" in first.stderr
    assert "TORCH False" in second.stderr, second.stderr
    assert json.loads(first.stdout)["memory"] == json.loads(second.stdout)["memory"]


def test_without_torch_one_message_names_the_extra(tmp_path, monkeypatch):
    import planner.model.generic as generic

    monkeypatch.setattr(generic, "stack_key", lambda: None)
    monkeypatch.setitem(sys.modules, "runner.generic", None)  # import fails as without the extra
    with pytest.raises(UserError) as err:
        resolve_model(_folder(tmp_path, TINY["olmo3"]))
    assert "vramplan[train]" in str(err.value) and "'olmo3'" in str(err.value)


def _cli(*args):
    out = subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True, timeout=300)
    return out.returncode, out.stderr


def test_remote_code_without_code_says_the_flag_exists(tmp_path):
    config = {"model_type": "fancy_remote", "auto_map": {"AutoModelForCausalLM": "modeling_fancy.Fancy"}}
    code, err = _cli("--model", _folder(tmp_path, config), "--fixed")
    assert code == 2 and "--trust-remote-code" in err and "off by default" in err
    assert "Traceback" not in err


def test_config_transformers_rejects_gives_its_reason(tmp_path):
    config = dict(TINY["olmoe"], rope_parameters={"rope_type": "bogus", "rope_theta": 10000.0})
    code, err = _cli("--model", _folder(tmp_path, config), "--fixed")
    assert code == 2 and "transformers" in err and "bogus" in err and "Traceback" not in err


def test_not_a_causal_lm_names_its_type(tmp_path):
    code, err = _cli("--model", _folder(tmp_path, {"model_type": "t5", "d_model": 64}), "--fixed")
    assert code == 2 and "'t5'" in err and "decoder-only" in err


def _meta_total(config: dict, auto: str = "AutoModelForCausalLM") -> int:
    import torch
    import transformers
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(config["model_type"], **{k: v for k, v in config.items() if k != "model_type"})
    with torch.device("meta"):
        model = getattr(transformers, auto).from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def test_transformers5_moe_keys_read_by_the_analytic_model():
    """transformers 5 writes num_local_experts for Qwen3-MoE (4.x: num_experts), dtype for torch_dtype and
    rope_parameters for rope_theta/rope_scaling: the analytic parser reads both layouts."""
    from planner.model.spec import ModelSpec

    v5 = dict(BASE, model_type="qwen3_moe", num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
              moe_intermediate_size=32, dtype="bfloat16", rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    v4 = {k: v for k, v in v5.items() if k not in ("num_local_experts", "dtype", "rope_parameters")}
    v4.update(num_experts=4, torch_dtype="bfloat16", rope_theta=1e6, rope_scaling=None)
    a, b = ModelSpec.from_config(v5, name="v5"), ModelSpec.from_config(v4, name="v4")
    assert a.num_experts == b.num_experts == 4 and a.torch_dtype == b.torch_dtype == "bfloat16"
    assert count_params(a).total == count_params(b).total == _meta_total(v4)


def test_image_text_wrapper_plans_its_language_model_and_counts_the_tower(tmp_path):
    """Mistral 3: text_config is a mistral (analytic), the vision tower is counted in the weights, frozen."""
    from transformers import AutoConfig

    text = dict(BASE, model_type="mistral", num_hidden_layers=2, head_dim=16)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=16, head_dim=16)
    config = AutoConfig.for_model("mistral3", text_config=text, vision_config=vision).to_dict()
    spec = resolve_model(_folder(tmp_path, config))
    assert spec.model_type == "mistral" and spec.multimodal == "mistral3" and spec.generic is None
    assert spec.vision_params > 0
    assert count_params(spec).total + spec.vision_params == _meta_total(config, "AutoModelForImageTextToText")
    mb = estimate_memory(spec, TrainConfig(), resolve_setup("cpu", gpus=None, nodes=1))
    assert any("vision tower" in n for n in mb.notes)


@pytest.mark.parametrize("wrapper", ["qwen2_5_vl", "qwen2_vl"])
def test_qwen_vl_language_model_is_qwen2_shaped(tmp_path, wrapper):
    """Qwen2(.5)-VL: the language model plans analytically as Qwen2 (no causal-LM class of its own), the
    tower is counted; both layouts: text_config (transformers 5) and top-level keys (4.x)."""
    from transformers import AutoConfig

    text = dict(BASE, num_hidden_layers=2, tie_word_embeddings=False)
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                  embed_dim=32, fullatt_block_indexes=[0])
    v5 = AutoConfig.for_model(wrapper, text_config=text, vision_config=vision).to_dict()
    total = _meta_total(v5, "AutoModelForImageTextToText")
    v4 = {**{k: v for k, v in v5.items() if k != "text_config"}, **v5["text_config"], "model_type": wrapper}
    for i, config in enumerate((v5, v4)):
        (tmp_path / str(i)).mkdir()
        spec = resolve_model(_folder(tmp_path / str(i), config))
        assert spec.generic is None and spec.multimodal == wrapper
        assert count_params(spec).total + spec.vision_params == total


def test_kbit_gqa_traces_the_cuda_math_kernel_as_eager(tmp_path):
    """fp32 q/k/v with grouped-query heads: CUDA SDPA keeps the s x s probabilities (measured on an H200,
    planner.memory.shape.sdpa_falls_back_to_math); the CPU trace would not, so it runs eager."""
    from planner.memory.generic import activation_key

    spec = resolve_model(_folder(tmp_path, TINY["olmo3"]))  # 4 heads, 2 KV heads
    qlora = TrainConfig(quantization_bit=4, trainer="peft")  # a trainer that runs peft's k-bit upcast
    assert activation_key(spec, qlora, "cuda")[0]["attn"] == "eager"
    assert activation_key(spec, qlora, "cuda")[0]["dtype"] == "fp32"
    assert activation_key(spec, qlora, "cpu")[0]["attn"] == "sdpa"
    assert activation_key(spec, TrainConfig(), "cuda")[0]["attn"] == "sdpa"  # bf16: the flash kernel
    # a trainer that keeps the other weights 16-bit: 16-bit q/k/v, the flash kernel
    no_upcast = qlora.with_(trainer="llamafactory")
    assert activation_key(spec, no_upcast, "cuda")[0] == activation_key(spec, TrainConfig(), "cuda")[0]


def test_peft_refusing_all_linear_is_one_message(tmp_path):
    """peft refuses LoRA on Mamba's out_proj / conv1d: counts still plan, LoRA on "all" says peft's reason."""
    config = {"model_type": "mamba", "hidden_size": 64, "state_size": 8, "num_hidden_layers": 2,
              "vocab_size": 512, "intermediate_size": 128, "time_step_rank": 4}
    spec = resolve_model(_folder(tmp_path, config))
    assert count_params(spec).total == _meta_total(config)
    assert count_params(spec).experts == 0 and not spec.is_moe  # its 3-D conv1d weights are not experts
    with pytest.raises(UserError) as err:
        estimate_memory(spec, TrainConfig(), resolve_setup("cpu", gpus=None, nodes=1))
    assert "peft refuses" in str(err.value) and "--lora-target" in str(err.value)
