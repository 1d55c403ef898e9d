"""What training adds to the weights: trainable parameters, their gradients, optimizer states and the
optimizer step's temporaries (one GPU, before any ZeRO partitioning).

    >>> st = trainable_state(spec, TrainConfig(finetuning_type="lora", lora_rank=16))
    >>> st.params, st.optimizer_state_bytes
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.errors import UserError
from planner.memory.shape import check_lora_targets
from planner.memory.weights import DTYPE_BYTES, kbit_adapter_fp32
from planner.model.params import count_params, linear_layers, lora_wraps
from planner.model.spec import ModelSpec
from planner.train_config import EIGHT_BIT_OPTIMIZERS, OPTIMIZERS, TrainConfig
from planner.trainers import DEFAULT_TRAINER

# bitsandbytes 8-bit optimizers (optim/optimizer.py Optimizer8bit): block-wise quantized states in blocks
# of 256 with one fp32 absmax each; tensors under min_8bit_size elements keep fp32 states.
BNB_BLOCK = 256
BNB_MIN_8BIT_SIZE = 4096
STEP_BYTES = 4  # torch AdamW keeps a float32 `step` tensor per parameter


@dataclass(frozen=True)
class TrainableState:
    params: int  # trainable parameters
    tensors: tuple[int, ...]  # numel of each distinct trainable tensor shape, with multiplicity below
    counts: tuple[int, ...]  # how many tensors have that numel
    param_bytes: int  # bytes per trainable element (fp32 LoRA adapters; the load dtype otherwise)
    adapter_bytes: int  # LoRA/DoRA weights (0 for full and freeze: those train the base weights)
    gradient_bytes: int
    optimizer_state_bytes: int
    optimizer_temp_bytes: int  # peak extra during optimizer.step()


def _lora_tensors(spec: ModelSpec, train: TrainConfig) -> list[tuple[int, int]]:
    """(numel, count) of the adapter tensors: lora_A [r, in], lora_B [out, r], DoRA magnitude [out]."""
    check_lora_targets(spec, tuple(train.lora_target))
    r = train.lora_rank
    if spec.generic is not None and tuple(train.lora_target) == ("all",) and not train.use_dora:
        return [(n * r, c) for n, c in spec.generic.lora_all_tensors]  # what get_peft_model made
    out = []
    for lin in linear_layers(spec):
        if not lora_wraps(spec, lin, tuple(train.lora_target)):
            continue
        n = lin.per_layer * lin.layers
        out += [(r * lin.in_features, n), (lin.out_features * r, n)]
        if train.use_dora:
            out.append((lin.out_features, n))
    return out


def _layer_tensors(spec: ModelSpec, layer: int) -> list[tuple[int, int]]:
    """(numel, count) of decoder layer `layer`'s parameters."""
    if spec.generic is not None:
        return list(spec.generic.kind_tensors[spec.generic.layer_kinds[layer]])
    out = []
    moe = layer in set(spec.moe_layers)
    for lin in linear_layers(spec):
        if lin.layers != spec.num_layers:  # MoE models: expert/shared parts in MoE layers, dense MLP elsewhere
            in_moe = lin.expert or lin.name.startswith("shared_expert")
            if in_moe != moe:
                continue
        numel = lin.in_features * lin.out_features
        if lin.module_linear:
            out.append((numel, lin.per_layer))
        else:  # routed experts: one 3-D parameter [num_experts, out, in]
            out.append((numel * lin.per_layer, 1))
        if lin.bias:
            out.append((lin.out_features, lin.per_layer))
    out.append((spec.hidden_size, spec.arch.norms_per_layer))
    if spec.arch.qk_norm_full:  # OLMo-2: q_norm and k_norm span the whole projections
        out += [(spec.num_heads * spec.head_dim, 1), (spec.num_kv_heads * spec.head_dim, 1)]
    elif spec.arch.qk_norm:
        out.append((spec.head_dim, 2))
    if moe:
        out.append((spec.num_experts * spec.hidden_size, 1))  # router
    return out


def _all_tensors(spec: ModelSpec) -> list[tuple[int, int]]:
    if spec.generic is not None:
        return list(spec.generic.tensors)
    out = [(spec.vocab_size * spec.hidden_size, 1), (spec.hidden_size, 1)]  # embeddings, final norm
    if not spec.tie_word_embeddings:
        out.append((spec.vocab_size * spec.hidden_size, 1))
    for j in range(spec.num_layers):
        out += _layer_tensors(spec, j)
    return out


def _merge(pairs: list[tuple[int, int]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    acc: dict[int, int] = {}
    for numel, n in pairs:
        acc[numel] = acc.get(numel, 0) + n
    keys = tuple(sorted(acc))
    return keys, tuple(acc[k] for k in keys)


def optimizer_state_bytes(optim: str, tensors: tuple[int, ...], counts: tuple[int, ...], param_bytes: int) -> int:
    """States kept by the optimizer across steps (torch AdamW: exp_avg, exp_avg_sq in the param dtype)."""
    if optim not in OPTIMIZERS:
        raise UserError(f"--optim {optim}: not an optimizer the memory model knows.",
                        f"Known: {', '.join(OPTIMIZERS)}.")
    total = 0
    for numel, n in zip(tensors, counts, strict=True):
        if optim in ("adamw_torch", "adamw_torch_forloop", "adamw_torch_fused"):
            per = 2 * numel * param_bytes + STEP_BYTES
        elif optim in EIGHT_BIT_OPTIMIZERS:
            if numel < BNB_MIN_8BIT_SIZE:
                per = 2 * numel * 4
            else:
                per = 2 * numel + 2 * 4 * -(-numel // BNB_BLOCK)
        elif optim == "paged_adamw_32bit":
            per = 2 * numel * 4
        else:  # sgd without momentum (HF default momentum=0)
            per = 0
        total += per * n
    if optim in EIGHT_BIT_OPTIMIZERS:
        total += 2 * 256 * 4  # the two dynamic quantization maps
    return total


def optimizer_temp_bytes(optim: str, params: int, tensors: tuple[int, ...], counts: tuple[int, ...],
                         state_bytes: int) -> int:
    """Extra bytes alive during optimizer.step() (torch/optim/adamw.py, adam.py)."""
    if optim == "adamw_torch":
        # _multi_tensor_adam: exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs): one copy of the
        # second moments of every parameter in the group (measured: tests/runner/test_gates.py)
        return params * state_bytes
    if optim == "adamw_torch_forloop" and tensors:
        # _single_tensor_adam: denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt) makes two temporaries,
        # while the previous parameter's `denom` is still bound to the loop variable: three of the
        # largest parameter when it occurs twice (measured), else two of it and the next largest
        largest = tensors[-1]
        prev = largest if counts[-1] > 1 else (tensors[-2] if len(tensors) > 1 else 0)
        return (2 * largest + prev) * state_bytes
    return 0  # fused AdamW and bitsandbytes update in one kernel per tensor


def trainable_state(spec: ModelSpec, train: TrainConfig) -> TrainableState:
    """Trainable parameters of `train` on `spec`, their gradients, optimizer states and step temporaries."""
    key = TrainConfig(finetuning_type=train.finetuning_type, dtype=train.dtype, lora_rank=train.lora_rank,
                      lora_target=tuple(train.lora_target), use_dora=train.use_dora,
                      freeze_trainable_layers=train.freeze_trainable_layers, optim=train.optim,
                      deepspeed_stage=1 if train.deepspeed_stage else 0,
                      quantization_bit=train.quantization_bit if train.finetuning_type == "lora" else None,
                      trainer=train.trainer if train.quantization_bit else DEFAULT_TRAINER)
    return _trainable_state(spec, key)


@lru_cache(maxsize=1024)
def _trainable_state(spec: ModelSpec, train: TrainConfig) -> TrainableState:
    method = train.finetuning_type
    if method == "lora":
        pairs = _lora_tensors(spec, train)
        # peft cast_adapter_dtype upcasts fp16/bf16 adapters to fp32 (autocast_adapter_dtype=True); a
        # DeepSpeed bf16/fp16 engine casts the whole module back to 16 bits.
        pb = DTYPE_BYTES[train.dtype] if train.deepspeed_stage and train.dtype != "fp32" else 4
        if not kbit_adapter_fp32(train):  # TRL casts a quantized model's adapters to bf16
            pb = 2
    elif method == "full":
        pairs = _all_tensors(spec)
        pb = DTYPE_BYTES[train.dtype]
    elif method == "freeze":
        n, L = train.freeze_trainable_layers, spec.num_layers
        ids = range(max(0, L - n), L) if n > 0 else range(min(-n, L))
        pairs = [x for j in ids for x in _layer_tensors(spec, j)]
        pb = DTYPE_BYTES[train.dtype]
    else:
        raise UserError(f"--method {method}: unknown fine-tuning method.", "Use lora, qlora, full or freeze.")
    tensors, counts = _merge(pairs)
    params = sum(t * n for t, n in zip(tensors, counts, strict=True))
    if method == "full":
        assert params == count_params(spec).total, "trainable tensors must add up to the parameter count"
    state = optimizer_state_bytes(train.optim, tensors, counts, pb)
    sb = 4 if train.optim in ("paged_adamw_32bit",) else pb
    return TrainableState(
        params=params, tensors=tensors, counts=counts, param_bytes=pb,
        adapter_bytes=params * pb if method == "lora" else 0,
        gradient_bytes=params * pb,
        optimizer_state_bytes=state,
        optimizer_temp_bytes=optimizer_temp_bytes(train.optim, params, tensors, counts, sb),
    )
