"""Published memory rules of thumb ("anchors"), one pure function each, to compare vramplan against.

Each function restates a published rule with its source; none of them is used by the planner to
plan. benchmarks/accuracy.py puts their predictions beside vramplan's and the measured peaks.
`anchors_for(spec, train)` maps one configuration onto every rule the way a user would apply it.

Units: the rules quote "GB"; the cards they are compared with are labelled in GiB-sized "GB"
(an "80GB" H100 holds 79.6 GiB), so "GB" in a rule is read as GiB here.

    >>> deepspeed_zero2_gpu_bytes(7_000_000_000, num_gpus=1, cpu_offload=False)
    140000000000
"""

from __future__ import annotations

import math

from planner.model.params import count_params, linear_layers, lora_adapter_params
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig
from planner.units import GIB, MIB

ANCHORS = ("accelerate", "deepspeed", "llamafactory", "gpu_poor", "guide_2p5gb_per_1k")


# -- accelerate estimate-memory ----------------------------------------------------------------------
def accelerate_training_bytes(total_params: int, dtype: str) -> int | None:
    """`accelerate estimate-memory`'s "Training using Adam" column for one dtype row.

    Source: huggingface/accelerate src/accelerate/commands/estimate.py, estimate_training_usage():
    sizes start from the fp32 model (4 B/param). float32: model, gradients = 1x, optimizer = 2x,
    step = 4x the fp32 size; float16/bfloat16: model 1x, gradients 1.5x, optimizer 2x the fp32
    size. The column shows the largest entry: 16 B/param (fp32) or 8 B/param (16-bit). int8/int4
    rows print "N/A" (None here). Activations, batch and sequence length are not considered.
    """
    fp32_bytes = 4 * total_params
    if dtype in ("fp32", "float32"):
        return 4 * fp32_bytes
    if dtype in ("bf16", "fp16", "float16", "bfloat16"):
        return 2 * fp32_bytes
    return None


# -- DeepSpeed model-state estimators ------------------------------------------------------------------
def deepspeed_zero2_gpu_bytes(total_params: int, *, num_gpus: int = 1, cpu_offload: bool = False) -> int:
    """Per-GPU model-state bytes, ZeRO stage 1/2.

    Source: deepspeed/runtime/zero/stage_1_and_2.py estimate_zero2_model_states_mem_needs():
    offload: 2P (16-bit params); else 2P + 18P/N (16-bit grads 2, fp32 grads 4, fp32 params 4,
    Adam states 8, partitioned over N GPUs). Activations are not counted.
    """
    if cpu_offload:
        return 2 * total_params
    return 2 * total_params + int(18 * total_params / num_gpus)


def deepspeed_zero3_gpu_bytes(total_params: int, largest_layer_params: int, *, num_gpus: int = 1,
                              cpu_offload: bool = False, cpu_offload_params: bool = False) -> int:
    """Per-GPU model-state bytes, ZeRO stage 3.

    Source: deepspeed/runtime/zero/stage3.py estimate_zero3_model_states_mem_needs():
    4 x largest layer (gathered 16-bit params and grads), + 18P/N without offload, + 2P/N with
    the optimizer offloaded, nothing more with params offloaded too.
    """
    largest = 4 * largest_layer_params
    if cpu_offload and cpu_offload_params:
        return largest
    if cpu_offload:
        return largest + int(2 * total_params / num_gpus)
    return largest + int(18 * total_params / num_gpus)


# -- LLaMA-Factory README hardware table -----------------------------------------------------------------
# Source: hiyouga/LLaMA-Factory README.md, "Hardware Requirement" (*estimated*), columns 7B/14B/30B/70B:
# | Full (bf16 or fp16)             | 32 | 120GB | 240GB | 600GB | 1200GB | 18x GB |
# | Full (pure_bf16)                | 16 |  60GB | 120GB | 300GB |  600GB |  8x GB |
# | Freeze/LoRA/GaLore/APOLLO/BAdam | 16 |  16GB |  32GB |  64GB |  160GB |  2x GB |
# | QLoRA                           |  8 |  10GB |  20GB |  40GB |   80GB |   x GB |
# | QLoRA                           |  4 |   6GB |  12GB |  24GB |   48GB | x/2 GB |
# | QLoRA                           |  2 |   4GB |   8GB |  16GB |   24GB | x/4 GB |
LLAMAFACTORY_SIZES_B = (7.0, 14.0, 30.0, 70.0)
LLAMAFACTORY_TABLE_GB = {
    "full_amp": (120, 240, 600, 1200),
    "full_pure_bf16": (60, 120, 300, 600),
    "lora16": (16, 32, 64, 160),
    "qlora8": (10, 20, 40, 80),
    "qlora4": (6, 12, 24, 48),
    "qlora2": (4, 8, 16, 24),
}


def llamafactory_row(train: TrainConfig) -> str | None:
    """Which row of the table a configuration reads (None: the table has no such row)."""
    if train.finetuning_type == "full":
        if train.quantization_bit:
            return None
        return "full_amp" if train.dtype == "fp32" or train.amp else "full_pure_bf16"
    if train.quantization_bit:
        return {8: "qlora8", 4: "qlora4", 2: "qlora2"}.get(train.quantization_bit)
    return "lora16"  # Freeze/LoRA share the 16-bit row


def llamafactory_table_bytes(row: str, total_params: int) -> int:
    """The table's figure for a model of `total_params`, interpolated linearly between its columns.

    Outside 7B-70B the rows are proportional to size (the `x`B column), so the nearest column is
    scaled by size: 0.5B LoRA -> 16 GB x 0.5/7.
    """
    billions = total_params / 1e9
    xs, ys = LLAMAFACTORY_SIZES_B, LLAMAFACTORY_TABLE_GB[row]
    if billions <= xs[0]:
        gb = ys[0] * billions / xs[0]
    elif billions >= xs[-1]:
        gb = ys[-1] * billions / xs[-1]
    else:
        i = max(k for k in range(len(xs)) if xs[k] <= billions)
        frac = (billions - xs[i]) / (xs[i + 1] - xs[i])
        gb = ys[i] + frac * (ys[i + 1] - ys[i])
    return int(gb * GIB)


# -- gpu_poor ------------------------------------------------------------------------------------------
def gpu_poor_training_bytes(*, vocab: int, hidden: int, heads: int, intermediate: int, layers: int,
                            seq_len: int, batch: int, method: str, gradient_checkpointing: bool,
                            optimizer: str = "adam") -> int | None:
    """gpu_poor's training estimate ("Total", MB x 2^20).

    Source: RahulSChand/gpu_poor src/App.js, getAllComputedData() for training: model size
    (computeModelSize / convertToMBModelSize) + grads and optimizer (getGradOptMemory) +
    activations (getActivationMemory, x0.15 with gradient checkpointing) + 650 MB overhead.
    Its float size is always 2 bytes (convertToBytes). method: "full" | "lora" | "qlora".
    """
    fb = 2.0
    params = vocab * hidden * 2 + layers * 4 * hidden * hidden + layers * 3 * intermediate * hidden
    model_mb = params * fb / MIB
    if method == "qlora":
        extra_mb = 0.06 * model_mb  # "extra" is taken from the 16-bit size
        model_mb = model_mb / 4 - params * 2 / (64 * MIB) + extra_mb

    s, h, a, inter = seq_len, hidden, heads, intermediate
    attn = s * h * 3 * fb + s * h * 2 * fb + s * s * a * fb + s * s * a * 4 + s * s * a * fb + 3 * s * h * fb
    ffn = 2 * h * s * fb + fb * 5 * s * inter + inter * s * fb
    norm = s * 4 * 2 + s * h * fb * 6
    act_mb = (attn + ffn + norm) * layers * batch / MIB
    if gradient_checkpointing:
        act_mb *= 0.15

    if optimizer != "adam":
        return None
    if method == "full":
        grad_opt = params * 3 * fb
    elif method == "lora":
        grad_opt = layers * 8 * hidden * 2 * 4 * 3 * 2
    elif method == "qlora":
        common = (10 * h + 5 * h + 4 * inter + 2 * inter) * layers
        ratio = s / 50
        extra = 0.75 * common * 50 * (math.sqrt(ratio) if ratio > 1.0 else 1.0)
        grad_opt = layers * 8 * hidden * 0.5 * 4 * 3 + extra * batch
    else:
        return None
    total_mb = model_mb + grad_opt / MIB + act_mb + 650
    return int(total_mb * MIB)


# -- "2.5 GB per 1K tokens" ------------------------------------------------------------------------------
GUIDE_GIB_PER_1K_TOKENS = 2.5
GUIDE_GIB_PER_1K_TOKENS_LIGER = 0.6


def guide_per_1k_tokens_bytes(weights_bytes: int, tokens: int, *, liger: bool) -> int:
    """Community fine-tuning guides for Qwen2.5-7B LoRA: weights + 2.5 GB per 1K tokens in the
    batch (0.6 GB with Liger Kernel), applied to other models and methods the way the guides do."""
    per_1k = GUIDE_GIB_PER_1K_TOKENS_LIGER if liger else GUIDE_GIB_PER_1K_TOKENS
    return weights_bytes + int(per_1k * GIB * tokens / 1000)


# -- one configuration -> every anchor ---------------------------------------------------------------------
def _weights_bytes(spec: ModelSpec, train: TrainConfig) -> int:
    """Bytes of the loaded weights: quantized decoder linears at bits/8, the rest in the load dtype."""
    dtype_bytes = {"bf16": 2, "fp16": 2, "fp32": 4}[train.dtype]
    total = count_params(spec).total
    if not train.quantization_bit:
        return total * dtype_bytes
    quantized = sum(x.weight_numel for x in linear_layers(spec) if x.module_linear)
    return int(quantized * train.quantization_bit / 8) + (total - quantized) * dtype_bytes


def _largest_layer_params(spec: ModelSpec) -> int:
    # DeepSpeed's *_all_live helpers take the module with the most direct parameters:
    # the embedding (or lm_head) for every catalog LLM, unless one projection is larger.
    per_linear = max(x.in_features * x.out_features for x in linear_layers(spec))
    return max(spec.vocab_size * spec.hidden_size, per_linear)


def anchors_for(spec: ModelSpec, train: TrainConfig, *, num_gpus: int = 1) -> dict[str, int | None]:
    """Every anchor's predicted peak bytes for one configuration (None: the rule does not cover it).

    How each rule is applied: accelerate reads the row of the load dtype; DeepSpeed's estimator
    counts the parameters the optimizer updates (all for full, the adapters for LoRA); LLaMA-Factory
    reads the method's row; gpu_poor gets the model shape, sequence, batch and checkpointing; the
    per-1K-tokens rule counts per_device_train_batch_size x cutoff_len tokens.
    """
    counts = count_params(spec)
    total = counts.total
    tokens = train.per_device_train_batch_size * train.cutoff_len
    out: dict[str, int | None] = dict.fromkeys(ANCHORS)

    out["accelerate"] = None if train.quantization_bit else accelerate_training_bytes(total, train.dtype)

    trainable = _trainable_params(spec, train)
    if train.deepspeed_stage == 3:
        out["deepspeed"] = deepspeed_zero3_gpu_bytes(
            trainable, _largest_layer_params(spec), num_gpus=num_gpus,
            cpu_offload=train.offload != "none", cpu_offload_params=train.offload == "params")
    else:
        out["deepspeed"] = deepspeed_zero2_gpu_bytes(trainable, num_gpus=num_gpus,
                                                     cpu_offload=train.offload != "none")

    row = llamafactory_row(train)
    out["llamafactory"] = llamafactory_table_bytes(row, total) if row else None

    method = {"full": "full", "lora": "qlora" if train.quantization_bit == 4 else "lora"}.get(
        train.finetuning_type)
    if method and not (train.quantization_bit and train.quantization_bit != 4):
        out["gpu_poor"] = gpu_poor_training_bytes(
            vocab=spec.vocab_size, hidden=spec.hidden_size, heads=spec.num_heads,
            intermediate=spec.intermediate_size, layers=spec.num_layers, seq_len=train.cutoff_len,
            batch=train.per_device_train_batch_size, method=method,
            gradient_checkpointing=train.gradient_checkpointing,
            optimizer="adam" if train.optim.startswith(("adamw", "paged_adamw")) else train.optim)

    out["guide_2p5gb_per_1k"] = guide_per_1k_tokens_bytes(_weights_bytes(spec, train), tokens,
                                                          liger=train.use_liger_kernel)
    return out


def _trainable_params(spec: ModelSpec, train: TrainConfig) -> int:
    if train.finetuning_type == "full":
        return count_params(spec).total
    if train.finetuning_type == "freeze":  # the last N decoder layers (LLaMA-Factory freeze tuning)
        c = count_params(spec)
        per_layer = (c.attention + c.mlp + c.experts + c.router + c.norms - spec.hidden_size) // spec.num_layers
        return per_layer * min(abs(train.freeze_trainable_layers), spec.num_layers)
    return lora_adapter_params(spec, train.lora_rank, tuple(train.lora_target))

