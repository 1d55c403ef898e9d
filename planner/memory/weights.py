"""Bytes of the model's own weights on one GPU: dtype, bitsandbytes quantization, peft's fp32 upcast.

    >>> weight_bytes(spec, TrainConfig(quantization_bit=4)).total_bytes
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from planner.model.params import count_params, linear_layers
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

# bitsandbytes 4-bit (functional.quantize_4bit): NF4 codes packed two per byte, one absmax per block of 64.
NF4_BLOCK = 64
# Double quantization (QuantState.state2, functional.quantize_blockwise): absmax -> uint8 in blocks of 256,
# with one fp32 absmax per block, one fp32 offset, and a 256-entry fp32 dynamic code per weight tensor.
NF4_DQ_BLOCK = 256
NF4_CODE_BYTES = 16 * 4  # the NF4 code table (16 fp32 values) each QuantState carries
DQ_CODE_BYTES = 256 * 4 + 4  # nested dynamic map + offset
# LLM.int8 (bitsandbytes Int8Params): int8 weight + one fp32 scale per output row (SCB).
INT8_ROW_SCALE_BYTES = 4



def kbit_upcast(train: TrainConfig) -> bool:
    """A quantized run whose trainer calls peft.prepare_model_for_kbit_training (peft/utils/other.py:209 casts
    every fp16/bf16 parameter that is not Params4bit to fp32: embeddings, norms, biases, an untied lm_head).
    LLaMA-Factory, Axolotl and TRL >= 0.23 do not (profiles/trainers.yaml cites the lines)."""
    from planner.trainers import recipe

    return bool(train.quantization_bit) and recipe(train.trainer).kbit_upcast_fp32


@dataclass(frozen=True)
class WeightBytes:
    """The base model's weights. `quantized_bytes` covers packed/int8 linear weights, `quant_constants_bytes`
    their absmax/scales/codes, `other_bytes` everything kept in floating point."""

    quantized_bytes: int
    quant_constants_bytes: int
    other_bytes: int
    float_dtype_bytes: int  # bytes per element of the unquantized parameters

    @property
    def total_bytes(self) -> int:
        return self.quantized_bytes + self.quant_constants_bytes + self.other_bytes


def kbit_adapter_fp32(train: TrainConfig) -> bool:
    """LoRA weights on a quantized base stay fp32 (peft's autocast_adapter_dtype; LLaMA-Factory's cast), unless
    the trainer casts them to the 16-bit compute dtype (TRL >= 0.29: sft_trainer.py:905-911 in 1.16.0)."""
    from planner.trainers import recipe

    return not train.quantization_bit or recipe(train.trainer).kbit_adapter_fp32


def weight_dtype_bytes(train: TrainConfig) -> int:
    """Bytes per element of the float weights as loaded (fp32 under the k-bit upcast)."""
    if kbit_upcast(train):
        return 4
    return DTYPE_BYTES[train.dtype]


def nf4_bytes(numel: int, double_quant: bool) -> tuple[int, int]:
    """(packed bytes, constants bytes) of one NF4 tensor (bitsandbytes functional.quantize_4bit)."""
    blocks = -(-numel // NF4_BLOCK)
    packed = -(-numel // 2)
    if not double_quant:
        return packed, blocks * 4 + NF4_CODE_BYTES
    blocks2 = -(-blocks // NF4_DQ_BLOCK)
    return packed, blocks * 1 + blocks2 * 4 + DQ_CODE_BYTES + NF4_CODE_BYTES


def weight_bytes(spec: ModelSpec, train: TrainConfig) -> WeightBytes:
    """Weights of the whole model (not partitioned) as `train` loads them."""
    from planner.stack import experts_quantized

    return _weight_bytes(spec, train.quantization_bit or 0, train.double_quantization, weight_dtype_bytes(train),
                         bool(train.quantization_bit) and spec.is_moe and experts_quantized(train.stack))


@lru_cache(maxsize=1024)
def _weight_bytes(spec: ModelSpec, bits: int, double_quant: bool, fbytes: int,
                  experts_quantized: bool = False) -> WeightBytes:
    counts = count_params(spec)
    # An image-text checkpoint's vision tower and projector load with it and stay frozen; counted in the
    # float dtype (not quantized: an upper bound when bitsandbytes would quantize their linears too).
    vision = spec.vision_params * fbytes
    if not bits:
        return WeightBytes(0, 0, counts.total * fbytes + vision, fbytes)
    quantized = constants = 0
    quantized_numel = 0
    # Generic families: the linears transformers' bitsandbytes integration replaces (runner.generic)
    chosen = set(spec.generic.quantized) if spec.generic is not None else None
    for lin in linear_layers(spec):
        # transformers 5's routed experts are 3-D parameters that bitsandbytes leaves alone; transformers 4
        # keeps one nn.Linear per expert, which it quantizes (planner.stack)
        if not lin.module_linear and not (experts_quantized and lin.expert):
            continue
        if chosen is not None and lin.name not in chosen:
            continue
        tensors = lin.per_layer * lin.layers
        per_tensor = lin.in_features * lin.out_features
        quantized_numel += per_tensor * tensors
        if bits == 8:
            quantized += per_tensor * tensors
            constants += lin.out_features * INT8_ROW_SCALE_BYTES * tensors
        else:
            packed, const = nf4_bytes(per_tensor, double_quant)
            quantized += packed * tensors
            constants += const * tensors
    return WeightBytes(quantized, constants, (counts.total - quantized_numel) * fbytes + vision, fbytes)
