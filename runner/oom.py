"""After an out-of-memory stop: the next smaller configuration, chosen with a margin that learned from the miss.

The memory model under-predicted this run by measured/predicted (at least); a candidate is taken when
its prediction, scaled by that ratio and a safety margin, fits the budget. Candidates, cheapest first:
checkpointing, Liger Kernel, a halved micro-batch (accumulation doubled: same effective batch), 8-bit
AdamW, optimizer offload, 4-bit base weights (QLoRA), LoRA instead of full tuning, a halved cutoff_len.

    >>> step = next_smaller(spec, train, setup, device="cuda", measured_bytes=25e9, predicted_bytes=22e9)
    >>> step.changes, step.train.per_device_train_batch_size
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from planner.hardware.gpu_spec import GpuSetup
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig
from runner import build

MARGIN = 0.10  # extra headroom per retry on top of the observed miss


@dataclass(frozen=True)
class Smaller:
    train: TrainConfig
    changes: tuple[str, ...]
    predicted_bytes: int | None = None  # the model's figure for the new config (before the margin)
    confident: bool = False  # True when the margin-scaled prediction fits the budget


def candidates(spec: ModelSpec, train: TrainConfig, *, device: str) -> list[tuple[str, TrainConfig]]:
    """Single changes that lower peak memory, in the order a person would try them."""
    cuda = device == "cuda"
    out: list[tuple[str, TrainConfig]] = []
    if not train.gradient_checkpointing:
        out.append(("enable gradient checkpointing", train.with_(gradient_checkpointing=True)))
    if cuda and not train.use_liger_kernel and build.liger_supported(spec):
        out.append(("enable Liger Kernel (fused linear cross-entropy)", train.with_(use_liger_kernel=True)))
    b = train.per_device_train_batch_size
    if b > 1:
        out.append((f"halve the micro-batch {b} -> {b // 2} (gradient accumulation "
                    f"{train.gradient_accumulation_steps} -> {train.gradient_accumulation_steps * 2})",
                    train.with_(per_device_train_batch_size=b // 2,
                                gradient_accumulation_steps=train.gradient_accumulation_steps * 2)))
    if cuda and train.optim in ("adamw_torch", "adamw_torch_fused", "adamw_torch_forloop"):
        out.append(("8-bit AdamW states (bitsandbytes)", train.with_(optim="adamw_8bit")))
    if train.deepspeed_stage and train.offload == "none":
        out.append(("offload optimizer states to CPU (ZeRO-Offload)", train.with_(offload="optimizer")))
    if cuda and train.is_lora and not train.quantization_bit:
        out.append(("load the base model in 4-bit NF4 (QLoRA)", train.with_(quantization_bit=4)))
    if train.finetuning_type in ("full", "freeze"):
        out.append(("train LoRA adapters instead of the weights", train.with_(finetuning_type="lora")))
    if train.cutoff_len >= 256:
        out.append((f"halve cutoff_len {train.cutoff_len} -> {train.cutoff_len // 2} (longer samples are cut)",
                    train.with_(cutoff_len=train.cutoff_len // 2)))
    return out


def next_smaller(spec: ModelSpec, train: TrainConfig, setup: GpuSetup, *, device: str,
                 measured_bytes: int | None, predicted_bytes: int | None, attempt: int = 1,
                 predict: Callable[[TrainConfig], int | None] | None = None) -> Smaller | None:
    """The first single change (then cumulative ones) predicted to fit with the widened margin; None when
    nothing smaller is left."""
    budget = setup.gpu.memory_bytes
    ratio = 1.0
    if measured_bytes and predicted_bytes:
        ratio = max(1.0, measured_bytes / predicted_bytes)
    scale = ratio * (1 + MARGIN * attempt)
    current, changes = train, []
    for _ in range(8):
        options = candidates(spec, current, device=device)
        if not options:
            break
        for label, cfg in options:
            pred = predict(cfg) if predict else None
            if pred is not None and pred * scale <= budget:
                return Smaller(cfg, (*changes, label), pred, confident=True)
        if predict is None:  # no memory model: the cheapest change, as a person would try it
            label, cfg = options[0]
            return Smaller(cfg, (label,))
        label, current = options[0]
        changes.append(label)
    if changes:
        return Smaller(current, tuple(changes), predict(current) if predict else None, confident=False)
    return None


def resumable(old: TrainConfig, new: TrainConfig) -> bool:
    """Whether a checkpoint of `old` can be resumed by `new` (same trainable tensors and optimizer state)."""
    keys = ("finetuning_type", "lora_rank", "lora_target", "use_dora", "freeze_trainable_layers", "optim",
            "deepspeed_stage")
    return all(getattr(old, k) == getattr(new, k) for k in keys)
