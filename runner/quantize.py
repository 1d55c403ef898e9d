"""bitsandbytes k-bit weights for a build (runner.build): the BitsAndBytesConfig of a plan, and the in-place
swap of a built model's decoder Linears for bitsandbytes modules.

Two ways to a k-bit model with random weights, both in runner.build.build_model:
- load: the weights written to a folder and loaded back with `quantization_config(train)`, as a k-bit
  checkpoint loads (transformers quantizes every decoder nn.Linear while loading);
- swap: the model built in its compute dtype on the device, then `quantize_in_place`, as transformers'
  integration replaces the modules (lm_head and embeddings unquantized). Seconds instead of the minutes an
  8B model takes to write and load; the GPU benchmarks build this way.

    >>> quantize_in_place(model, train, compute_dtype=torch.bfloat16, device="cuda")  # Linear -> Linear4bit
"""

from __future__ import annotations

from typing import Any

from planner.train_config import TrainConfig


def quantization_config(train: TrainConfig):
    """The BitsAndBytesConfig of a k-bit plan (what LLaMA-Factory's quantization_bit / double_quantization ask)."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.float16 if train.dtype == "fp16" else torch.bfloat16
    if train.quantization_bit == 4:
        # QLoRA (Dettmers et al. 2023): NF4 storage, double quantization, 16-bit compute. BitsAndBytesConfig's
        # own defaults (fp4, no double quant, fp32 compute) are not QLoRA's, so every field is set.
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=train.double_quantization,
                                  bnb_4bit_compute_dtype=compute)
    return BitsAndBytesConfig(load_in_8bit=True)


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


def quantize_in_place(model: Any, train: TrainConfig, *, compute_dtype, device: str) -> Any:
    """A model built in its compute dtype on `device`, frozen and its decoder Linears quantized; marked
    `is_loaded_in_4bit` (8bit) like a k-bit checkpoint, so that peft's k-bit step treats it as one.
    The transient 16-bit weights are freed (the CUDA cache emptied)."""
    import torch

    model.requires_grad_(False)
    quantize_linears(model, bits=train.quantization_bit, compute_dtype=compute_dtype,
                     double_quant=train.double_quantization, device=device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    setattr(model, "is_loaded_in_4bit" if train.quantization_bit == 4 else "is_loaded_in_8bit", True)
    return model
