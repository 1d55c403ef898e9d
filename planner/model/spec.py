"""ModelSpec: the config.json facts that decide memory, as one frozen value.

One parser serves the catalog (profiles/models/*.yaml store config.json keys verbatim), local folders
and hub configs, so a catalog entry and the real config.json can never be read differently.

    >>> spec = ModelSpec.from_config({"model_type": "qwen2", "hidden_size": 896, ...}, name="Qwen2.5-0.5B")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner.errors import UserError
from planner.model.config_compat import language_config

if TYPE_CHECKING:
    from planner.model.facts import GenericFacts


@dataclass(frozen=True)
class Arch:
    """How a transformers model family lays out its parameters (checked against the meta-device build)."""

    qkv_bias: str | bool = False  # config key that switches q/k/v biases on, or a constant
    o_bias: str | bool = False  # same for the attention output projection
    mlp_bias: str | bool = False
    norms_per_layer: int = 2  # Gemma-2 and GLM-4-0414 wrap attention and MLP in pre+post norms
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k
    fused_qkv: bool = False  # Phi-3: one qkv_proj instead of q/k/v
    fused_gate_up: bool = False  # Phi-3, GLM: one gate_up_proj
    moe: str | None = None  # "mixtral" | "qwen2_moe" | "qwen3_moe"
    # RMSNorm variant: "llama" (weight * x_hat.to(dtype)), "gemma" (x_hat * (1 + weight) in fp32, then
    # type_as(x)), "olmo" ((weight * x_hat).to(dtype): the weight multiplies the fp32 x_hat)
    norm: str = "llama"
    pre_norms: bool = True  # input_layernorm before attention and MLP (OLMo-2: none)
    post_norms: bool = False  # a norm on the attention and MLP outputs (Gemma-2/3, OLMo-2)
    qk_norm_full: bool = False  # OLMo-2: q_norm / k_norm over the whole projection, not per head
    embed_scale: bool = False  # Gemma: embeddings * sqrt(hidden_size), a new tensor
    multipliers: bool = False  # Granite: embedding/residual multipliers and logits / logits_scaling
    # (attn_logit_softcapping, final_logit_softcapping) when config.json leaves them out; None: never
    softcap: tuple[float | None, float | None] | None = None
    eager_masks: int = 1  # 4-D masks eager attention builds (Gemma-2/3: a full and a sliding one)
    rope_fp32: bool = False  # OLMo-2: fp32 cos/sin, q/k rotated in fp32 then cast back (.to(q_type))
    rope_per_layer_type: bool = False  # Gemma 3: one cos/sin pair per layer type (local and global theta)
    default_attn: str = "sdpa"
    counted_as: str | None = None  # remote-code families counted (and built in tests) as this transformers type
    lora_names: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # transformers' config-class defaults for keys a config.json may omit (e.g. Qwen3Config.head_dim=128)
    defaults: tuple[tuple[str, Any], ...] = ()


_GENERIC_ARCH = Arch()  # placeholder for families read off the module tree (ModelSpec.generic)

# Each row was checked by tests/planner/test_params.py against sum(p.numel()) of the transformers model.
ARCHS: dict[str, Arch] = {
    "llama": Arch(qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias"),
    "mistral": Arch(),
    "qwen2": Arch(qkv_bias=True),  # transformers Qwen2Attention: q/k/v bias=True, o_proj bias=False
    "qwen3": Arch(qkv_bias="attention_bias", o_bias="attention_bias", qk_norm=True,
                  defaults=(("head_dim", 128),)),
    "gemma2": Arch(qkv_bias="attention_bias", o_bias="attention_bias", norms_per_layer=4, default_attn="eager",
                   norm="gemma", post_norms=True, embed_scale=True, softcap=(50.0, 30.0), eager_masks=2,
                   defaults=(("head_dim", 256), ("tie_word_embeddings", True), ("sliding_window", 4096))),
    # Gemma 1: Llama layout with Gemma's (1 + w) RMSNorm, scaled embeddings and GeGLU (same shapes)
    "gemma": Arch(qkv_bias="attention_bias", o_bias="attention_bias", norm="gemma", embed_scale=True,
                  defaults=(("head_dim", 256), ("tie_word_embeddings", True))),
    # Gemma 3 language model: Gemma-2's four norms and q/k norms over head_dim, sliding layers interleaved
    # with global ones (layer_types; no parameters of their own), soft-capping off unless configured
    "gemma3_text": Arch(qkv_bias="attention_bias", o_bias="attention_bias", norms_per_layer=4, qk_norm=True,
                        norm="gemma", post_norms=True, embed_scale=True, softcap=(None, None), eager_masks=2,
                        rope_per_layer_type=True,
                        # Gemma3TextConfig defaults: the 4B's text_config states none of these
                        defaults=(("head_dim", 256), ("tie_word_embeddings", True), ("sliding_window", 4096),
                                  ("vocab_size", 262208), ("num_attention_heads", 8), ("num_key_value_heads", 4),
                                  ("max_position_embeddings", 131072), ("query_pre_attn_scalar", 256))),
    # OLMo-2: no input norms; norms on the attention and MLP outputs; q/k norms over the whole projection
    "olmo2": Arch(qkv_bias="attention_bias", o_bias="attention_bias", qk_norm=True, qk_norm_full=True,
                  norm="olmo", pre_norms=False, post_norms=True, rope_fp32=True),
    # Granite 3.x: Llama layout; scalar multipliers on the embeddings, the residual branches and the logits
    "granite": Arch(qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias", multipliers=True),
    # SmolLM3: Llama layout; every 4th layer skips the rotary (no_rope_layers: no parameters, and the
    # same tensors saved for backward)
    "smollm3": Arch(qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias",
                    defaults=(("tie_word_embeddings", True),)),
    "phi3": Arch(fused_qkv=True, fused_gate_up=True,
                 lora_names=("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
    "glm": Arch(qkv_bias="attention_bias", fused_gate_up=True,
                lora_names=("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
                defaults=(("head_dim", 128), ("attention_bias", True))),
    "glm4": Arch(qkv_bias="attention_bias", fused_gate_up=True, norms_per_layer=4,
                 lora_names=("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
                 defaults=(("head_dim", 128), ("attention_bias", True))),
    "mixtral": Arch(moe="mixtral"),
    "qwen2_moe": Arch(qkv_bias=True, moe="qwen2_moe"),
    "qwen3_moe": Arch(qkv_bias="attention_bias", o_bias="attention_bias", qk_norm=True, moe="qwen3_moe"),
    # Qwen2-VL / Qwen2.5-VL language models: Qwen2 decoder layers (q/k/v bias) with multimodal rotary
    # positions; transformers has no causal-LM class for them alone, so they are built as qwen2
    "qwen2_vl_text": Arch(qkv_bias=True, counted_as="qwen2"),
    "qwen2_5_vl_text": Arch(qkv_bias=True, counted_as="qwen2"),
    # Remote-code families (trust_remote_code upstream): their layers are Llama-shaped, with fused
    # projections (Baichuan W_pack = q|k|v; InternLM2 wqkv) that hold the same number of parameters.
    "baichuan": Arch(counted_as="llama", lora_names=("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj")),
    "internlm2": Arch(counted_as="llama", lora_names=("wqkv", "wo", "w1", "w3", "w2")),
}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts of one checkpoint; everything the memory and throughput models read."""

    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    max_position_embeddings: int
    hub_id: str | None = None
    # MoE (zero when dense)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    moe_layers: tuple[int, ...] = ()
    torch_dtype: str = "bfloat16"
    sliding_window: int | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    source: str = "catalog"  # catalog | folder | hub
    source_dir: Path | None = None  # where config.json (and tokenizer files) live, when known
    published_params: int | None = None
    # Image-text checkpoints: the wrapper's model_type and its vision tower + projector, which training
    # loads and keeps frozen (LLaMA-Factory: freeze_vision_tower, freeze_multi_modal_projector default
    # True); 0 when not counted (see `notes`).
    multimodal: str | None = None
    vision_params: int = 0
    # Families outside ARCHS: what the module tree of the transformers model says (planner.model.generic)
    generic: GenericFacts | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def arch(self) -> Arch:
        return ARCHS.get(self.model_type) or _GENERIC_ARCH

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def default_attn(self) -> str:
        return self.arch.default_attn

    @classmethod
    def from_config(cls, config: dict[str, Any], *, name: str, hub_id: str | None = None,
                    source: str = "catalog", source_dir: Path | None = None,
                    published_params: int | None = None, where: str = "config.json") -> ModelSpec:
        """Read a config.json dict (4.x or 5.x keys; an image-text wrapper plans its text_config).
        `where` names the file for error messages."""
        config, wrapper = language_config(config)
        model_type = config.get("model_type")
        if model_type not in ARCHS:
            known = ", ".join(sorted(ARCHS))
            raise UserError(
                f"{where}: model_type {model_type!r} has no analytic model in the planner.",
                f"Analytic model types: {known}. Others are planned from their transformers module tree: "
                "give --model a folder or hub id (needs the [train] extra).",
            )
        arch = ARCHS[model_type]
        config = {**dict(arch.defaults), **{k: v for k, v in config.items() if v is not None}}

        def need(key: str, *alts: str) -> Any:
            for k in (key, *alts):
                if config.get(k) is not None:
                    return config[k]
            raise UserError(f"{where}: missing {key!r}, which a {model_type} config must have.")

        def flag(spec: str | bool) -> bool:
            return bool(config.get(spec, False)) if isinstance(spec, str) else spec

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        layers = int(need("num_hidden_layers"))
        if model_type == "internlm2":  # its config calls the q/k/v bias "bias"
            qkv_bias = o_bias = bool(config.get("bias", False))
        else:
            qkv_bias, o_bias = flag(arch.qkv_bias), flag(arch.o_bias)

        experts = 0
        moe_inter = shared_inter = top_k = 0
        moe_layers: tuple[int, ...] = ()
        if arch.moe == "mixtral":
            experts = int(need("num_local_experts", "num_experts"))
            top_k = int(need("num_experts_per_tok"))
            moe_inter = int(need("intermediate_size"))
            moe_layers = tuple(range(layers))
        elif arch.moe in ("qwen2_moe", "qwen3_moe"):
            # transformers 5 writes num_local_experts for Qwen3-MoE (4.x: num_experts)
            experts = int(need("num_experts", "num_local_experts"))
            top_k = int(need("num_experts_per_tok"))
            moe_inter = int(need("moe_intermediate_size"))
            shared_inter = int(config.get("shared_expert_intermediate_size") or 0)
            step = int(config.get("decoder_sparse_step") or 1)
            dense_only = set(config.get("mlp_only_layers") or [])
            # transformers: layer i is sparse when i not in mlp_only_layers and (i + 1) % step == 0
            moe_layers = tuple(i for i in range(layers) if i not in dense_only and (i + 1) % step == 0)

        window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
        return cls(
            name=name,
            model_type=model_type,
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            vocab_size=int(need("vocab_size")),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=flag(arch.mlp_bias),
            max_position_embeddings=int(
                config.get("max_position_embeddings") or config.get("model_max_length")
                or config.get("seq_length") or 4096
            ),
            hub_id=hub_id,
            num_experts=experts,
            num_experts_per_tok=top_k,
            moe_intermediate_size=moe_inter,
            shared_expert_intermediate_size=shared_inter,
            moe_layers=moe_layers,
            torch_dtype=str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"),
            sliding_window=int(window) if window else None,
            attn_logit_softcapping=config.get("attn_logit_softcapping"),
            final_logit_softcapping=config.get("final_logit_softcapping"),
            source=source,
            source_dir=source_dir,
            published_params=published_params,
            multimodal=wrapper,
            config=dict(config),
        )
