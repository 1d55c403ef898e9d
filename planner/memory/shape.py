"""`Shape`: the facts of one (model, training config, device kind) that the activation recipes read.

Built once per configuration (cached); every size in it is bytes per token of one tensor kind.

    >>> S = layer_shape(spec, TrainConfig(), "cuda")
    >>> S.c, S.a          # bf16 activations, fp32 LoRA adapters (peft autocast_adapter_dtype)
    (2, 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.errors import UserError
from planner.memory.weights import DTYPE_BYTES, kbit_adapter_fp32, kbit_upcast
from planner.model.params import linear_layers, lora_wraps
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig


@dataclass(frozen=True)
class Proj:
    """One projection of a decoder layer as the recipes see it."""

    role: str  # q k v qkv o gate up gate_up down
    n_in: int
    n_out: int
    lora: bool  # a LoRA adapter wraps it
    params: int = 0  # weights whose gradient its backward produces, when not n_in x n_out (MoE experts)

    @property
    def weight_numel(self) -> int:
        return self.params or self.n_in * self.n_out


@dataclass(frozen=True)
class Shape:
    h: int
    i: int  # MLP intermediate size (dense layers)
    q: int  # num_heads * head_dim
    kv: int  # num_kv_heads * head_dim
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layers: int
    c: int  # bytes of matmul outputs (the compute dtype)
    cr: int  # bytes of the residual stream and norm inputs
    cn: int  # bytes of norm outputs (weight dtype promoted with cr)
    cl: int  # bytes of the logits (lm_head output)
    a: int  # bytes of LoRA adapter weights and their activations
    w: int  # bytes of trainable base weights (their gradients have the same dtype)
    mask_b: int  # bytes per element of a dropout mask: the input dtype on CPU, bool (1) on CUDA
    attn: str  # sdpa | eager | flash_attention_2 | math (CUDA SDPA's math kernel: sdpa_falls_back_to_math)
    gemma: bool  # Gemma RMSNorm: (1 + w) in fp32, output type_as(x)
    attn_softcap: bool
    final_softcap: bool
    rank: int
    dropout: bool
    dora: bool
    attn_projs: tuple[Proj, ...]  # q, k, v (or fused qkv) then o
    mlp_projs: tuple[Proj, ...]  # gate, up (or gate_up) then down
    fused_gate_up: bool
    device: str  # cpu | cuda
    liger: bool
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before the rotary
    amp: bool = False  # torch.autocast over fp32 weights: linears cast inputs and weights to `c`
    grad_scale: float = 1.0  # fraction of each parameter gradient this rank keeps (ZeRO-2/3: 1/N)
    grads_resident: bool = False  # gradients exist before backward (accumulation): new ones are transients
    olmo_norm: bool = False  # OLMo-2 RMSNorm: (w * x_hat) in fp32, then .to(dtype)
    pre_norms: bool = True  # input norms before attention and MLP
    post_norms: bool = False  # norms on the attention and MLP outputs
    qk_norm_full: bool = False  # q/k norms over the whole projection (one row per token)
    embed_scale: bool = False  # embeddings * a scalar, a new tensor (Gemma sqrt(h), Granite multiplier)
    multipliers: bool = False  # Granite: residual branches * residual_multiplier, logits / logits_scaling
    eager_masks: int = 1  # 4-D masks eager attention gets
    rope_fp32: bool = False  # rotary in fp32 (fp32 cos/sin), outputs cast back to the compute dtype
    rope_pairs: int = 1  # cos/sin pairs the model computes once per step (Gemma 3: one per layer type)


def check_lora_targets(spec: ModelSpec, targets: tuple[str, ...]) -> None:
    if targets == ("all",):
        if spec.generic is not None and spec.generic.lora_all_error:
            raise UserError(f"--lora-target all: peft refuses all-linear on {spec.name} "
                            f"({spec.generic.model_type}): {spec.generic.lora_all_error}",
                            "Name the targets with --lora-target (e.g. in_proj,x_proj), or use --method full.")
        return
    names = sorted({lin.name.rsplit(".", 1)[-1] for lin in linear_layers(spec) if lin.module_linear})
    if spec.generic is not None:  # what peft matched for each name
        unknown = [t for t in targets if not spec.generic.wrapped((t,))]
    else:
        unknown = [t for t in targets if t not in names and not any(n.endswith(t) for n in names)]
    if unknown:
        raise UserError(
            f"--lora-target: {', '.join(unknown)} is not a linear layer of {spec.name}.",
            f"Its linear layers are: {', '.join(names)} (or use 'all').",
        )


def activation_dtypes(train: TrainConfig) -> tuple[int, int, int, int]:
    """(c, cr, cn, cl) bytes: matmul outputs, residual stream, norm outputs, logits."""
    if kbit_upcast(train):
        # After peft's fp32 upcast the embeddings, norms and lm_head are fp32, so the residual stream is
        # fp32, and bitsandbytes Linear4bit/8bitLt return their input's dtype (bnb nn/modules.py
        # `.to(inp_dtype)`): every activation outside the quantized matmul is fp32.
        return 4, 4, 4, 4
    if train.dtype == "fp32" and train.amp:
        # torch.autocast: linear/matmul/sdpa outputs in the autocast dtype; the embeddings, the
        # residual additions and the (fp32-weight) norms stay fp32; the lm_head runs in autocast.
        amp = DTYPE_BYTES[train.amp]
        return amp, 4, 4, amp
    d = DTYPE_BYTES[train.dtype]
    return d, d, d, d


def resolve_attn(spec: ModelSpec, train: TrainConfig) -> str:
    impl = train.attn_implementation or spec.default_attn
    if spec.model_type == "gemma2" and impl == "sdpa":
        raise UserError(
            "--attn sdpa: transformers' Gemma-2 does not support sdpa (no logit soft-capping); it runs eager.",
            "Use --attn eager (the default) or --attn flash_attention_2.",
        )
    return impl


def sdpa_falls_back_to_math(spec: ModelSpec, attn: str, c: int, device: str) -> bool:
    """True where CUDA SDPA runs its math kernel, which keeps the s x s probabilities as eager does.

    transformers hands grouped-query heads to SDPA with enable_gqa=True (no mask for unpadded rows); the
    flash kernel takes only 16-bit inputs and the memory-efficient kernel no enable_gqa, so fp32 q/k/v
    with GQA (peft's k-bit upcast, or plain fp32 training) leave only the math kernel. Measured on an H200
    (benchmarks/results/gpu-session-h200-141g.md): Llama-3.1-8B QLoRA at 8,192 tokens allocated 44.4 GiB
    after prepare_model_for_kbit_training and 19.7 GiB without the upcast (bf16 q/k/v: flash); the
    largest trainable cutoff grew as s^2 (24/40/80 GB: 4,896 / 6,912-10,368 / 11,008 tokens).
    The CPU's flash kernel takes fp32 and GQA, so the CPU oracles never see this.
    """
    return device == "cuda" and attn == "sdpa" and c == 4 and spec.num_kv_heads < spec.num_heads


def _layer_type_count(spec: ModelSpec) -> int:
    """Distinct attention layer types: config.json's layer_types, else Gemma 3's default pattern (every
    sliding_window_pattern-th layer global, transformers Gemma3TextConfig)."""
    types = spec.config.get("layer_types")
    if not types:
        pattern = int(spec.config.get("sliding_window_pattern") or 6)
        types = ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(spec.num_layers)]
    return len(set(types))


@lru_cache(maxsize=2048)
def layer_shape(spec: ModelSpec, train: TrainConfig, device: str, grad_scale: float = 1.0,
                grads_resident: bool = False) -> Shape:
    """The Shape of `spec` trained as `train` on a `device` kind ("cpu" or "cuda")."""
    c, cr, cn, cl = activation_dtypes(train)
    lora = train.finetuning_type == "lora"
    if lora:
        check_lora_targets(spec, tuple(train.lora_target))
    lins = [x for x in linear_layers(spec) if not x.expert]
    n_attn = 2 if len(lins) >= 2 and lins[0].out_features > spec.num_heads * spec.head_dim else 4
    attn_lins, mlp_lins = lins[:n_attn], lins[n_attn:]
    names = ("qkv", "o") if n_attn == 2 else ("q", "k", "v", "o")
    attn_projs = tuple(
        Proj(role, x.in_features, x.out_features, lora and lora_wraps(spec, x, tuple(train.lora_target)))
        for role, x in zip(names, attn_lins, strict=False)
    )
    dense = [x for x in mlp_lins if not x.name.startswith("shared_expert")][:3]
    mlp_roles = ("gate_up", "down") if len(dense) == 2 else ("gate", "up", "down")
    mlp_projs = tuple(
        Proj(role, x.in_features, x.out_features, lora and lora_wraps(spec, x, tuple(train.lora_target)))
        for role, x in zip(mlp_roles, dense, strict=False)
    )
    inter = spec.intermediate_size
    if spec.is_moe and len(spec.moe_layers) * 2 >= spec.num_layers:
        # MoE approximation (not checked against the oracles): each token runs top-k experts plus the
        # shared expert, taken as one gated MLP of k * moe_intermediate + shared intermediate; backward
        # produces gradients for every expert (and the router) that trains.
        h, k, E, mi = spec.hidden_size, spec.num_experts_per_tok, spec.num_experts, spec.moe_intermediate_size
        sh = spec.shared_expert_intermediate_size
        inter = k * mi + sh
        shared = {x.name.rsplit(".", 1)[-1]: x for x in mlp_lins if x.name.startswith("shared_expert.")}
        def lora_on(name: str) -> bool:
            return name in shared and lora and lora_wraps(spec, shared[name], tuple(train.lora_target))
        mlp_projs = (
            Proj("gate", h, inter, lora_on("gate_proj"), params=E * h * mi + sh * h + E * h),
            Proj("up", h, inter, lora_on("up_proj"), params=E * h * mi + sh * h),
            Proj("down", inter, h, lora_on("down_proj"), params=E * mi * h + sh * h),
        )
        dense = [None, None, None]
    # peft cast_adapter_dtype: fp16/bf16 adapters -> fp32; a DeepSpeed bf16/fp16 engine casts the module
    # (adapters included) back to 16 bits
    a = 4 if lora else DTYPE_BYTES[train.dtype]
    if lora and train.deepspeed_stage and train.dtype != "fp32":
        a = DTYPE_BYTES[train.dtype]
    if lora and train.quantization_bit and not kbit_adapter_fp32(train):
        a = 2  # TRL casts a quantized model's adapters to bf16 (profiles/trainers.yaml kbit_adapter_dtype)
    arch = spec.arch
    gemma = arch.norm == "gemma"
    cap_attn, cap_final = arch.softcap or (None, None)
    attn = resolve_attn(spec, train)
    if sdpa_falls_back_to_math(spec, attn, c, device):
        attn = "math"  # saves what eager attention saves (repeated k/v, fp32 probs), without eager's 4-D mask
    return Shape(
        h=spec.hidden_size, i=inter, q=spec.num_heads * spec.head_dim, kv=spec.num_kv_heads * spec.head_dim,
        heads=spec.num_heads, kv_heads=spec.num_kv_heads, head_dim=spec.head_dim, vocab=spec.vocab_size,
        layers=spec.num_layers, c=c, cr=cr, cn=cn, cl=cl, a=a, w=DTYPE_BYTES[train.dtype],
        mask_b=(a if lora else c) if device == "cpu" else 1,
        attn=attn, gemma=gemma,
        # Gemma2Config defaults: attn_logit_softcapping=50.0, final_logit_softcapping=30.0 (None switches off);
        # Gemma3TextConfig: both None
        attn_softcap=arch.softcap is not None and spec.config.get("attn_logit_softcapping", cap_attn) is not None,
        final_softcap=arch.softcap is not None and spec.config.get("final_logit_softcapping", cap_final) is not None,
        rank=train.lora_rank, dropout=lora and train.lora_dropout > 0, dora=lora and train.use_dora,
        attn_projs=attn_projs, mlp_projs=mlp_projs, fused_gate_up=len(dense) == 2, device=device,
        liger=train.use_liger_kernel, qk_norm=spec.arch.qk_norm, amp=bool(train.amp and train.dtype == "fp32" and not train.quantization_bit),
        grad_scale=grad_scale, grads_resident=grads_resident,
        olmo_norm=arch.norm == "olmo", pre_norms=arch.pre_norms, post_norms=arch.post_norms,
        qk_norm_full=arch.qk_norm_full, embed_scale=arch.embed_scale or arch.multipliers,
        multipliers=arch.multipliers, eager_masks=arch.eager_masks, rope_fp32=arch.rope_fp32 and c != 4,
        rope_pairs=_layer_type_count(spec) if arch.rope_per_layer_type else 1,
    )
