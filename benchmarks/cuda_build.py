"""Build a measured model on the device the way `plan --apply` (runner.train) builds it, with random weights.

- Liger Kernel: runner.train's class-level patches for the architecture, applied before the build.
- 16-bit and fp32 methods: runner.build.build_model on the device.
- k-bit (QLoRA): `plan --apply --init random` writes random weights to disk for bitsandbytes to
  quantize on load; that takes minutes for an 8B model, so here the model is built in the compute
  dtype on the device and every decoder nn.Linear is swapped for a bitsandbytes Linear4bit
  (Linear8bitLt) holding the quantized weight, as transformers' integration does while loading
  (lm_head and embeddings stay unquantized); the model is marked `is_loaded_in_4bit` like a k-bit
  checkpoint, and runner.train's method step follows (peft prepare_model_for_kbit_training with its
  fp32 upcast of the non-quantized weights, checkpointing, LoRA). The transient 16-bit copy is freed
  before measuring (the harness empties the cache and resets the peaks after loading).
- The k-bit preparation and checkpointing follow train.trainer's recipe (runner.build.apply_method):
  "peft" upcasts with prepare_model_for_kbit_training, "llamafactory" does not.

    >>> model, notes = build_for_measure(spec, train, device="cuda")
"""

from __future__ import annotations

from typing import Any

from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig


def build_for_measure(spec: ModelSpec, train: TrainConfig, *, device: str) -> tuple[Any, list[str]]:
    """(model ready to train, notes). Liger Kernel is applied when train.use_liger_kernel (CUDA only);
    train.trainer's recipe picks the k-bit preparation (see the module docstring)."""
    from runner.build import NeedsCuda, build_model

    notes: list[str] = []
    if train.use_liger_kernel:
        apply_liger(spec, train, device, notes)
    try:
        model = build_model(spec, train, device=device)
    except NeedsCuda:
        if not train.quantization_bit:
            raise
        model = build_quantized(spec, train, device=device)
        then = f"the {train.trainer} recipe's method step (runner.build.apply_method)"
        notes.append(f"{train.quantization_bit}-bit weights quantized from a random {train.dtype} build "
                     f"(bitsandbytes, lm_head and embeddings unquantized), then {then}")
    return model, notes


def quantize_linears(model, *, bits: int, compute_dtype, double_quant: bool, device: str) -> int:
    """Swap the decoder's nn.Linear modules for bitsandbytes k-bit ones; returns how many were swapped."""
    import bitsandbytes as bnb
    import torch

    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is not torch.nn.Linear or ".layers." not in f".{full}.":
                continue
            w = child.weight.data
            if bits == 4:
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                        compute_dtype=compute_dtype, compress_statistics=double_quant,
                                        quant_type="nf4", quant_storage=torch.uint8, device="meta")
                new.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4",
                                               compress_statistics=double_quant, quant_storage=torch.uint8)
            elif bits == 8:
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                          has_fp16_weights=False, threshold=6.0, device="meta")
                new.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
            else:
                raise ValueError(f"quantization_bit={bits}: only 4 and 8 are supported")
            new.weight = new.weight.to(device)  # quantizes (bitsandbytes does it on the move to a device)
            if child.bias is not None:
                new.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            new.train(child.training)
            setattr(parent, child_name, new)
            del child, w
            swapped += 1
    return swapped


def build_quantized(spec: ModelSpec, train: TrainConfig, *, device: str):
    """A random-init k-bit model with the method applied as runner.train applies it (QLoRA)."""
    import torch
    from transformers import AutoModelForCausalLM

    from runner.build import resolve_attn, torch_dtype, transformers_config

    if train.finetuning_type != "lora":
        raise ValueError("quantized weights are trained through LoRA adapters only (QLoRA)")
    impl, _ = resolve_attn(spec, train)
    cfg = transformers_config(spec)
    cfg.use_cache = False
    dtype = torch_dtype(train.dtype)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=impl)
    model.requires_grad_(False)
    quantize_linears(model, bits=train.quantization_bit, compute_dtype=dtype,
                     double_quant=train.double_quantization, device=device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    setattr(model, "is_loaded_in_4bit" if train.quantization_bit == 4 else "is_loaded_in_8bit", True)
    model.train()
    from runner.build import apply_method  # the method step of `plan --apply` and the oracles

    return apply_method(model, spec, train)


def apply_liger(spec: ModelSpec, train: TrainConfig, device: str, notes: list[str]) -> bool:
    """Liger Kernel's patches for the architecture, exactly as `plan --apply` applies them (CUDA only)."""
    cuda = device.startswith("cuda")
    try:
        from runner.train import _apply_liger
    except ImportError:
        if not cuda:
            notes.append("Liger Kernel needs CUDA (Triton): measured without it")
            return False
        import liger_kernel.transformers as liger

        patch = getattr(liger, f"apply_liger_kernel_to_{spec.arch.counted_as or spec.model_type}")
        patch()
        notes.append("Liger Kernel applied (class patches)")
        return True
    applied = _apply_liger(spec, train, "cuda" if cuda else "cpu", notes)
    if applied:
        notes.append("Liger Kernel applied (runner.train)")
    return applied
