"""The memory model of a family planned by the generic path (planner.model.generic): which traced
configuration stands in for a TrainConfig, and the ActivationModel its fitted traces make."""

from __future__ import annotations

from typing import Any

from planner.errors import UserError
from planner.memory.step import ActivationModel
from planner.memory.terms import Lin
from planner.memory.weights import kbit_upcast
from planner.model.facts import GenericFacts
from planner.model.generic import fitted


def activation_key(spec, train, device: str = "cuda") -> tuple[dict[str, Any], list[str]]:
    """The traced configuration standing in for `train` on a `device` kind (only what changes
    activations), and notes."""
    facts: GenericFacts = spec.generic
    notes = []
    if train.finetuning_type == "freeze":
        raise UserError(f"--method freeze: {spec.name} ({facts.model_type}) is planned from traces of a "
                        "shortened model, which do not model freezing by layer yet.",
                        "Use --method lora, qlora or full.")
    dtype, amp = train.dtype, train.amp
    if train.quantization_bit and not kbit_upcast(train):
        notes.append(f"{train.quantization_bit}-bit: activations traced as 16-bit LoRA (this trainer keeps "
                     "the non-quantized weights 16-bit, and bitsandbytes returns its input's dtype)")
    elif train.quantization_bit:
        # peft's k-bit upcast leaves every activation outside the quantized matmuls in fp32, and
        # bitsandbytes returns its input's dtype (planner.memory.shape.activation_dtypes): LoRA on fp32
        # weights is the traceable stand-in (bitsandbytes has no fake-tensor kernels)
        dtype, amp = "fp32", None
        notes.append(f"{train.quantization_bit}-bit: activations traced as LoRA on fp32 weights (what peft's "
                     "k-bit upcast leaves outside the quantized matmuls)")
    if train.use_liger_kernel:
        notes.append("Liger kernels: not modeled for this family (traced without; an upper bound)")
    attn = train.attn_implementation or facts.default_attn
    if device == "cuda" and attn == "sdpa" and dtype == "fp32" and not amp and spec.num_kv_heads < spec.num_heads:
        # CUDA SDPA runs its math kernel for fp32 q/k/v with grouped-query heads and keeps the s x s
        # probabilities (planner.memory.shape.sdpa_falls_back_to_math, measured on an H200); the CPU
        # flash kernel the trace would run does not: eager attention keeps the same tensors (+ its mask)
        attn = "eager"
        notes.append("fp32 q/k/v with grouped-query heads: CUDA SDPA falls back to its math kernel (s x s "
                     "probabilities kept); traced as eager attention")
    key = {"method": "full" if train.finetuning_type == "full" else "lora", "dtype": dtype, "amp": amp,
           "gc": bool(train.gradient_checkpointing), "attn": attn}
    if key["method"] == "lora":
        key.update(lora_rank=train.lora_rank, lora_target=list(train.lora_target),
                   lora_dropout=0.1 if train.lora_dropout > 0 else 0.0, dora=bool(train.use_dora))
    return key, notes


def generic_activation_model(spec, train, grad_scale: float = 1.0, device: str = "cuda"):
    """planner.memory.step.ActivationModel from the fitted traces of `train` on `spec`."""
    key, _ = activation_key(spec, train, device)
    fit = fitted(spec, key)
    forward, saved = Lin(*fit["forward"]), Lin(*fit["saved"])
    grads = Lin(*fit["backward_grads"]) * grad_scale
    end = Lin(*fit["grads_end"]) * grad_scale
    backward = Lin(*fit["backward"]) + grads
    tail = Lin(*fit["tail"]) + Lin(*fit["tail_grads"]) * grad_scale
    windows = tuple(Lin(*w["act"]) + Lin(*w["grads"]) * grad_scale for w in fit.get("windows", ()))
    return ActivationModel(forward_layers=(), forward_head=(forward,), backward_head=(backward,),
                           backward_layers=(tail, end, *windows), saved_layers=saved, saved_end_forward=saved,
                           grads_end=end, backward_head_grads=grads)
