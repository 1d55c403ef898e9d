"""Parameter counts must equal transformers' own sum(p.numel()) on the meta device."""

from __future__ import annotations

import json

import pytest

from planner.model.catalog import load_models
from planner.model.params import active_params, count_params, linear_layers
from planner.model.spec import ARCHS, ModelSpec

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)

# Tiny configs exercising every switch the parser knows: biases, tying, GQA, q/k norms, MoE layouts.
TINY = {
    "llama": dict(SMALL, attention_bias=True, mlp_bias=True),
    "llama-tied": dict(SMALL, model_type="llama", tie_word_embeddings=True),
    "mistral": dict(SMALL, head_dim=32),
    "qwen2": dict(SMALL),
    "qwen3": dict(SMALL, head_dim=24),
    "qwen3-bias": dict(SMALL, model_type="qwen3", attention_bias=True),
    "gemma2": dict(SMALL, head_dim=16),
    "phi3": dict(SMALL),
    "glm": dict(SMALL, attention_bias=True, head_dim=16),
    "glm4": dict(SMALL, attention_bias=True, head_dim=16),
    "mixtral": dict(SMALL, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": dict(SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=80, decoder_sparse_step=2, mlp_only_layers=[2]),
    "qwen3_moe": dict(SMALL, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32,
                      mlp_only_layers=[0]),
    "gemma": dict(SMALL, head_dim=16),
    "gemma3_text": dict(SMALL, head_dim=16, sliding_window=32),
    "olmo2": dict(SMALL),
    "olmo2-bias-tied": dict(SMALL, model_type="olmo2", attention_bias=True, tie_word_embeddings=True),
    "granite": dict(SMALL, attention_bias=True, mlp_bias=True, embedding_multiplier=12.0, logits_scaling=8.0),
    "smollm3": dict(SMALL, mlp_bias=True),
}


def _meta_numel(config: dict) -> int:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    from runner.build import transformers_config

    cfg = transformers_config(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def _spec(key: str, config: dict) -> ModelSpec:
    config = dict(config)
    config.setdefault("model_type", key)
    return ModelSpec.from_config(config, name=key)


@pytest.mark.parametrize("key", sorted(TINY))
def test_tiny_configs_match_transformers(key):
    spec = _spec(key, TINY[key])
    assert count_params(spec).total == _meta_numel(spec.config)


@pytest.mark.parametrize("entry", load_models(), ids=lambda e: e.name)
def test_catalog_matches_transformers(entry):
    spec = entry.spec
    assert count_params(spec).total == _meta_numel(spec.config)


def test_every_arch_has_a_tiny_case():
    covered = {dict(TINY[k]).get("model_type", k) for k in TINY}
    # remote-code: covered through the catalog; Qwen2(.5)-VL language models: against the whole image-text
    # model in tests/runner/test_generic.py
    assert set(ARCHS) - covered <= {"baichuan", "internlm2", "qwen2_vl_text", "qwen2_5_vl_text"}


def test_qwen25_7b_published_exact():
    entry = next(e for e in load_models() if e.name == "Qwen2.5-7B")
    counts = count_params(entry.spec)
    assert counts.total == 7_615_616_512
    assert counts.lm_head == counts.embeddings == 152064 * 3584


def test_config_folder_written_by_test(tmp_path):
    """A config.json folder the test writes resolves and counts exactly."""
    from planner.model.resolve import resolve_model

    config = dict(TINY["qwen3"], model_type="qwen3", architectures=["Qwen3ForCausalLM"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = resolve_model(str(tmp_path))
    assert spec.source == "folder"
    assert count_params(spec).total == _meta_numel(config)


def test_moe_active_and_linears():
    spec = _spec("mixtral", TINY["mixtral"])
    counts = count_params(spec)
    assert counts.experts == 3 * 4 * 3 * 64 * 96
    assert active_params(spec) == counts.total - counts.experts // 2
    experts = [x for x in linear_layers(spec) if x.expert]
    assert experts and not any(x.module_linear for x in experts)
