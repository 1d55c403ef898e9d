"""Exact parameter counts by group, and the linear layers LoRA targets and bitsandbytes quantizes.

Counts equal `sum(p.numel())` of the transformers model built on the meta device from the same config
(tests/planner/test_params.py checks every catalog architecture). Rotary tables are buffers, not
parameters; Gemma-2's embedding scale is a constant.

    >>> count_params(spec).total
    7615616512
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.model.spec import ModelSpec


@dataclass(frozen=True)
class Linear:
    """One kind of projection inside every decoder layer (or inside every MoE layer when `expert`).

    `per_layer` is how many of it one layer holds (num_experts for routed experts). Routed experts are
    3-D parameters in transformers 5 (`experts.gate_up_proj` [E, 2I, h]), not nn.Linear modules: peft's
    "all-linear" and bitsandbytes' Linear replacement skip them (`module_linear` False).
    """

    name: str
    in_features: int
    out_features: int
    bias: bool = False
    per_layer: int = 1
    layers: int = 1
    expert: bool = False
    module_linear: bool = True

    @property
    def weight_numel(self) -> int:
        return self.in_features * self.out_features * self.per_layer * self.layers

    @property
    def numel(self) -> int:
        return self.weight_numel + (self.out_features * self.per_layer * self.layers if self.bias else 0)


@dataclass(frozen=True)
class ParamCounts:
    embeddings: int
    attention: int
    mlp: int  # dense MLPs, shared experts and their gates
    experts: int  # routed experts (MoE)
    router: int
    norms: int  # layer norms, final norm, q/k norms
    lm_head: int  # 0 when tied to the embeddings

    @property
    def total(self) -> int:
        return (self.embeddings + self.attention + self.mlp + self.experts + self.router + self.norms
                + self.lm_head)

    def to_json(self) -> dict[str, int]:
        return {
            "embeddings": self.embeddings, "attention": self.attention, "mlp": self.mlp,
            "experts": self.experts, "router": self.router, "norms": self.norms, "lm_head": self.lm_head,
        }


def _attention_linears(spec: ModelSpec) -> list[Linear]:
    h, L = spec.hidden_size, spec.num_layers
    q_out = spec.num_heads * spec.head_dim
    kv_out = spec.num_kv_heads * spec.head_dim
    names = spec.arch.lora_names
    if spec.arch.fused_qkv or names[0] in ("W_pack", "wqkv"):
        return [
            Linear(names[0], h, q_out + 2 * kv_out, spec.qkv_bias, layers=L),
            Linear(names[1], q_out, h, spec.o_bias, layers=L),
        ]
    return [
        Linear(names[0], h, q_out, spec.qkv_bias, layers=L),
        Linear(names[1], h, kv_out, spec.qkv_bias, layers=L),
        Linear(names[2], h, kv_out, spec.qkv_bias, layers=L),
        Linear(names[3], q_out, h, spec.o_bias, layers=L),
    ]


def _mlp_linears(spec: ModelSpec, inter: int, layers: int, *, prefix: str = "") -> list[Linear]:
    if layers == 0 or inter == 0:
        return []
    h, b = spec.hidden_size, spec.mlp_bias
    names = spec.arch.lora_names
    if spec.arch.fused_gate_up:
        return [Linear(prefix + "gate_up_proj", h, 2 * inter, b, layers=layers),
                Linear(prefix + "down_proj", inter, h, b, layers=layers)]
    if spec.model_type == "internlm2":
        gate, up, down = names[2], names[3], names[4]
    else:
        gate, up, down = "gate_proj", "up_proj", "down_proj"
    return [Linear(prefix + gate, h, inter, b, layers=layers),
            Linear(prefix + up, h, inter, b, layers=layers),
            Linear(prefix + down, inter, h, b, layers=layers)]


def linear_layers(spec: ModelSpec) -> tuple[Linear, ...]:
    """Every projection of the decoder layers (lm_head excluded), with counts per model."""
    if spec.generic is not None:  # read off the module tree (planner.model.generic)
        return tuple(Linear(*row) for row in spec.generic.linears)
    out = _attention_linears(spec)
    moe_layers = len(spec.moe_layers)
    out += _mlp_linears(spec, spec.intermediate_size, spec.num_layers - moe_layers)
    if moe_layers:
        h, E, inter = spec.hidden_size, spec.num_experts, spec.moe_intermediate_size
        out += [
            Linear("experts.gate_up_proj", h, 2 * inter, per_layer=E, layers=moe_layers, expert=True,
                   module_linear=False),
            Linear("experts.down_proj", inter, h, per_layer=E, layers=moe_layers, expert=True,
                   module_linear=False),
        ]
        out += _mlp_linears(spec, spec.shared_expert_intermediate_size, moe_layers, prefix="shared_expert.")
        if spec.shared_expert_intermediate_size:
            out.append(Linear("shared_expert_gate", h, 1, layers=moe_layers))
    return tuple(out)


def lora_wraps(spec: ModelSpec, lin: Linear, targets: tuple[str, ...]) -> bool:
    """Whether peft wraps `lin` for lora target_modules `targets` (("all",) = peft's "all-linear").

    Analytic families: peft matches a target by the module name's last components, and "all-linear"
    is every nn.Linear of the decoder, lm_head excluded; routed experts are 3-D parameters in
    transformers 5, not nn.Linear modules. Generic families: what peft itself answered (runner.generic).
    """
    targets = tuple(targets)
    if spec.generic is not None:
        return lin.module_linear and lin.name in spec.generic.wrapped(targets)
    if not lin.module_linear:
        return False
    if targets == ("all",):
        return True
    return any(lin.name == t or lin.name.endswith("." + t) for t in targets)


def lora_adapter_params(spec: ModelSpec, rank: int, targets: tuple[str, ...]) -> int:
    """LoRA A and B of every targeted linear: r x (in + out) each (peft LoraLayer: A is r x in, B out x r).

    `targets` holds module names (short, "q_proj", or as listed, "shared_expert.gate_proj") or "all".
    """
    if spec.generic is not None and tuple(targets) == ("all",):
        return sum(rank * n * c for n, c in spec.generic.lora_all_tensors)
    return sum(rank * (x.in_features + x.out_features) * x.per_layer * x.layers
               for x in linear_layers(spec) if lora_wraps(spec, x, tuple(targets)))


def count_params(spec: ModelSpec) -> ParamCounts:
    """Parameters by group; `.total` equals transformers' sum(p.numel())."""
    if spec.generic is not None:
        return ParamCounts(**spec.generic.count)
    h, L, V = spec.hidden_size, spec.num_layers, spec.vocab_size
    linears = linear_layers(spec)
    attention = sum(x.numel for x in linears[: len(_attention_linears(spec))])
    experts = sum(x.numel for x in linears if x.expert)
    mlp = sum(x.numel for x in linears) - attention - experts
    moe_layers = len(spec.moe_layers)
    norms = L * spec.arch.norms_per_layer * h + h
    if spec.arch.qk_norm_full:  # OLMo-2: over num_heads * head_dim and num_kv_heads * head_dim
        norms += L * (spec.num_heads + spec.num_kv_heads) * spec.head_dim
    elif spec.arch.qk_norm:
        norms += L * 2 * spec.head_dim
    return ParamCounts(
        embeddings=V * h,
        attention=attention,
        mlp=mlp,
        experts=experts,
        router=moe_layers * spec.num_experts * h,
        norms=norms,
        lm_head=0 if spec.tie_word_embeddings else V * h,
    )


def active_params(spec: ModelSpec) -> int:
    """Parameters one token passes through: routed experts count top-k of E (MoE), all else in full."""
    counts = count_params(spec)
    if not spec.is_moe:
        return counts.total
    return counts.total - counts.experts * (spec.num_experts - spec.num_experts_per_tok) // spec.num_experts
