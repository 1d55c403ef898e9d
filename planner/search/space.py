"""What the search may vary: families of configs (method x ZeRO stage x offload x checkpointing), the
cutoff band the data allows, the micro-batch ladder and the target effective batch.

A *family* fixes every memory decision except cutoff_len and the micro batch; inside a family the peak
grows with both, which lets the search binary-search them (search.py).

    >>> space = build_space(spec, setup, data, pinned={"quantization_bit": 4}, target_batch=None)
    >>> [f.label for f in space.families][:2]
    ['QLoRA 4-bit', 'QLoRA 4-bit, no checkpointing']
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields
from functools import cache
from typing import Any

from planner.errors import UserError
from planner.hardware.gpu_spec import GpuSetup
from planner.model.liger import liger_supports
from planner.model.spec import ModelSpec
from planner.train_config import EIGHT_BIT_OPTIMIZERS, METHODS, OFFLOAD, OPTIMIZERS, TrainConfig, conflicts

# Default effective batch (samples per optimizer step). LoRA/QLoRA: QLoRA (Dettmers et al. 2023,
# App. B.2) trains 7B-13B with batch 16; LLaMA-Factory's examples use 8 per GPU (1 x GA 8); the seed
# guides advise 16-32 for LoRA SFT. Full fine-tuning: LIMA (Zhou et al. 2023) used 32.
DEFAULT_TARGET_BATCH = {"lora": 16, "qlora": 16, "freeze": 32, "full": 32}
MICRO_BATCHES = (1, 2, 4, 8, 16, 32, 64)
CUTOFF_STEP = 64  # planner.data's cutoff multiple: tensor-core friendly
MIN_CUTOFF = 256  # below this a chat sample rarely fits its prompt; never lowered further
DEFAULT_CUTOFF = 2048  # LLaMA-Factory's cutoff_len default, when there is no data

_TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}


@dataclass(frozen=True)
class Family:
    """Every memory decision but cutoff_len and the micro batch."""

    finetuning_type: str
    quantization_bit: int | None
    deepspeed_stage: int
    offload: str
    gradient_checkpointing: bool
    optim: str
    dtype: str
    amp: str | None

    @property
    def method(self) -> str:
        return "qlora" if self.finetuning_type == "lora" and self.quantization_bit else self.finetuning_type

    @property
    def label(self) -> str:
        name = {"lora": "LoRA", "full": "full", "freeze": "freeze"}[self.finetuning_type]
        if self.quantization_bit:
            name = f"QLoRA {self.quantization_bit}-bit"
        elif self.finetuning_type == "lora":
            name = "LoRA 16-bit"
        parts = [name]
        if self.deepspeed_stage:
            parts.append(f"ZeRO-{self.deepspeed_stage}" + ("" if self.offload == "none" else f" + {self.offload} offload"))
        if self.optim in EIGHT_BIT_OPTIMIZERS:
            parts.append("8-bit AdamW")
        if not self.gradient_checkpointing:
            parts.append("no checkpointing")
        return ", ".join(parts)


@dataclass(frozen=True)
class Space:
    base: TrainConfig  # pinned fields applied; cutoff/batch/family fields are set per candidate
    families: tuple[Family, ...]
    cutoff_target: int  # the cutoff the data asks for (or the pinned one)
    cutoff_band: tuple[int, int]  # p95-p99 of the data (target, target without data)
    cutoff_floor: int  # the search never goes below this
    cutoff_pinned: bool
    micro_batches: tuple[int, ...]
    batch_pinned: bool
    ga_pinned: int | None
    target_batch: int
    target_source: str
    liger: bool
    liger_why: str
    packing: bool
    group_by_length: bool
    skipped: tuple[str, ...] = ()  # methods left out, with why (for the reasons list)


@cache
def _liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None  # no import: Triton is slow to load


def liger_choice(spec: ModelSpec, setup: GpuSetup, pinned: dict[str, Any]) -> tuple[bool, str]:
    """Use Liger when pinned, else when supported and installed (or when planning for another machine)."""
    if "use_liger_kernel" in pinned:
        return bool(pinned["use_liger_kernel"]), "as given"
    if setup.gpu.is_cpu or setup.gpu.vendor not in ("nvidia", "generic"):
        return False, "Liger Kernel needs Triton on an NVIDIA GPU"
    if not liger_supports(spec):
        return False, f"Liger Kernel has no patch for {spec.model_type}"
    installed = _liger_installed()
    if installed:
        return True, "installed and supports this model: fused cross-entropy never materializes the logits"
    if not setup.detected:
        return True, "planning for another machine: install liger-kernel there (pip install liger-kernel)"
    return False, "liger-kernel is not installed here (pip install liger-kernel saves logits memory)"


def valid_stage(stage: int, offload: str, bits: int | None) -> bool:
    """What DeepSpeed (and the memory model) accept for a ZeRO stage and offload with these weights
    (planner.train_config.conflicts)."""
    return not conflicts(TrainConfig(quantization_bit=bits, deepspeed_stage=stage, offload=offload))


def _stages(ft: str, bits: int | None, world: int, cpu: bool) -> list[tuple[int, str]]:
    """(ZeRO stage, offload) worth trying, cheapest first."""
    if cpu or bits:
        # No DeepSpeed on the CPU; quantized weights stay whole on every GPU, and ZeRO-1/2 would only
        # partition the (tiny) adapter states.
        return [(0, "none")]
    if ft == "lora":  # ZeRO-1/2 partition only adapter states; ZeRO-3 partitions the frozen weights
        return [(0, "none")] + ([(3, "none")] if world > 1 else []) + [(3, "params")]
    return ([(0, "none")] + ([(1, "none"), (2, "none"), (3, "none")] if world > 1 else [])
            + [(2, "optimizer"), (3, "optimizer"), (3, "params")])


def _method_families(method: str, setup: GpuSetup, pinned: dict[str, Any], bits: int | None,
                     bf16: bool) -> list[Family]:
    world = setup.world_size
    half = "bf16" if bf16 else "fp16"
    ft = "lora" if method in ("lora", "qlora") else method
    if ft in ("full", "freeze") and "dtype" not in pinned:
        # LLaMA-Factory keeps trainable weights in fp32 under 16-bit autocast unless pure_bf16
        # (model/adapter.py: cast_trainable_params_to_fp32); DeepSpeed holds its own fp32 master copy.
        dtype, amp = "fp32", pinned.get("amp", half)
    else:
        dtype, amp = pinned.get("dtype", half), pinned.get("amp")
    stages = _stages(ft, bits, world, setup.gpu.is_cpu)
    if "deepspeed_stage" in pinned or "offload" in pinned:
        st, off = pinned.get("deepspeed_stage"), pinned.get("offload")
        combos = [(a, o) for a in ([st] if st is not None else [0, 1, 2, 3])
                  for o in ([off] if off is not None else list(OFFLOAD)) if valid_stage(a, o, bits)]
        stages = [c for c in stages if c in combos] or combos
    optims = ["adamw_torch_fused"]
    if ft != "lora":
        optims.append("adamw_8bit")  # bitsandbytes 8-bit states: 2 B/param instead of 8
    if "optim" in pinned:
        optims = [pinned["optim"]]
    checkpointing = [True, False] if "gradient_checkpointing" not in pinned else [bool(pinned["gradient_checkpointing"])]
    out = []
    for stage, offload in stages:
        for optim in optims:
            if "optim" not in pinned and conflicts(TrainConfig(optim=optim, deepspeed_stage=stage)):
                continue  # DeepSpeed runs its own optimizer partitions
            for gc in checkpointing:
                out.append(Family(ft, bits, stage, offload, gc, optim, dtype, amp))
    return out


def _methods(spec: ModelSpec, pinned: dict[str, Any]) -> tuple[list[tuple[str, int | None]], list[str]]:
    ft = pinned.get("finetuning_type")
    bits_pinned = "quantization_bit" in pinned
    bits = pinned.get("quantization_bit")
    skipped = []
    if ft in ("full", "freeze"):
        for conflict in conflicts(TrainConfig(finetuning_type=ft, quantization_bit=bits)):
            raise UserError(conflict.message, conflict.hint)
        return [(ft, None)], skipped
    if bits_pinned:
        return [("lora", bits)], skipped
    if ft == "lora" or ft is None:
        out = [("lora", None), ("lora", 8), ("lora", 4)]
        if ft is None:
            skipped.append("full fine-tuning considered only as a runner-up (ask with --method full)")
            out.append(("full", None))
        return out, skipped
    raise UserError(f"--method {ft}: unknown.", f"Choose one of: {', '.join(METHODS)}.")


def cutoff_band(spec: ModelSpec, data, pinned: dict[str, Any]) -> tuple[int, tuple[int, int], int, bool]:
    """(target, (p95, p99) band, floor, pinned) in multiples of 64, capped at the model's context."""
    context = max(CUTOFF_STEP, spec.max_position_embeddings // CUTOFF_STEP * CUTOFF_STEP)
    if "cutoff_len" in pinned:
        c = int(pinned["cutoff_len"])
        return c, (c, c), c, True
    if data is None or not len(data.lengths):
        c = min(DEFAULT_CUTOFF, context)
        return c, (c, c), min(MIN_CUTOFF, c), False
    from planner.data.stats import nearest_rank, round_up

    p95 = min(context, round_up(nearest_rank(data.lengths, 0.95), CUTOFF_STEP))
    p99 = min(context, round_up(nearest_rank(data.lengths, 0.99), CUTOFF_STEP))
    target = min(max(int(data.cutoff_len), p95), p99) if data.cutoff_len else p99
    target = min(target, context)
    return target, (p95, p99), min(MIN_CUTOFF, p95), False


def target_batch_for(method: str, world: int, given: int | None) -> tuple[int, str]:
    """Samples per optimizer step: --target-batch, else the method's default, at least one per GPU and a
    multiple of the world size (so gradient accumulation divides it)."""
    if given is not None:
        if given < 1:
            raise UserError(f"--target-batch {given}: must be at least 1.")
        base, src = given, "--target-batch"
    else:
        base = DEFAULT_TARGET_BATCH[method]
        src = {"lora": "QLoRA paper / LLaMA-Factory examples: 16 for LoRA SFT",
               "qlora": "QLoRA paper (Dettmers et al. 2023): 16",
               "full": "LIMA (Zhou et al. 2023): 32 for full fine-tuning",
               "freeze": "as full fine-tuning: 32"}[method]
    scaled = max(world, -(-base // world) * world)
    if scaled != base:
        src += f", rounded up to a multiple of {world} GPUs"
    return scaled, src


def build_space(spec: ModelSpec, setup: GpuSetup, data, *, pinned: dict[str, Any], target_batch: int | None,
                packing: bool = False, group_by_length: bool = False) -> Space:
    unknown = sorted(set(pinned) - _TRAIN_FIELDS)
    if unknown:
        raise UserError(f"pinned setting {unknown[0]!r} is not a TrainConfig field.")
    if pinned.get("offload", "none") not in OFFLOAD:
        raise UserError(f"--offload {pinned['offload']}: choose one of {', '.join(OFFLOAD)}.")
    if pinned.get("optim", "adamw_torch") not in OPTIMIZERS:
        raise UserError(f"--optim {pinned['optim']}: choose one of {', '.join(OPTIMIZERS)}.")
    bf16 = setup.gpu.bf16
    methods, skipped = _methods(spec, pinned)
    families: list[Family] = []
    for ft, bits in methods:
        method = "qlora" if bits else ft
        families += _method_families(method, setup, pinned, bits, bf16)
    liger, liger_why = liger_choice(spec, setup, pinned)
    target, band, floor, cut_pinned = cutoff_band(spec, data, pinned)
    first = "qlora" if methods[0][1] else methods[0][0]
    tb, src = target_batch_for(first, setup.world_size, target_batch)
    if "per_device_train_batch_size" in pinned:
        micro = (int(pinned["per_device_train_batch_size"]),)
    else:
        cap = max(1, tb // setup.world_size)
        micro = tuple(b for b in MICRO_BATCHES if b <= cap) or (1,)
        if cap not in micro and cap < MICRO_BATCHES[-1]:
            micro = tuple(sorted({*micro, cap}))
    ga = pinned.get("gradient_accumulation_steps")
    base = TrainConfig(**{k: v for k, v in pinned.items() if k in _TRAIN_FIELDS})
    base = base.with_(use_liger_kernel=liger)
    if not families:
        pins = ", ".join(f"{k}={pinned[k]}" for k in ("quantization_bit", "deepspeed_stage", "offload") if k in pinned)
        raise UserError(f"no configuration matches the pinned settings ({pins}).",
                        "Offload needs a ZeRO stage, parameter offload needs ZeRO-3, and bitsandbytes-quantized "
                        "weights cannot be partitioned by ZeRO-3.")
    return Space(base=base, families=tuple(families), cutoff_target=target, cutoff_band=band, cutoff_floor=floor,
                 cutoff_pinned=cut_pinned, micro_batches=micro, batch_pinned="per_device_train_batch_size" in pinned,
                 ga_pinned=int(ga) if ga is not None else None, target_batch=tb, target_source=src, liger=liger,
                 liger_why=liger_why, packing=packing, group_by_length=group_by_length, skipped=tuple(skipped))


def config_for(space: Space, fam: Family, cutoff: int, micro: int, world: int) -> TrainConfig:
    """The TrainConfig of one candidate: family + cutoff + micro batch + accumulation to the target."""
    ga = space.ga_pinned or max(1, -(-space.target_batch // (micro * world)))
    return space.base.with_(
        finetuning_type=fam.finetuning_type, quantization_bit=fam.quantization_bit,
        deepspeed_stage=fam.deepspeed_stage, offload=fam.offload, gradient_checkpointing=fam.gradient_checkpointing,
        optim=fam.optim, dtype=fam.dtype, amp=fam.amp, cutoff_len=cutoff, per_device_train_batch_size=micro,
        gradient_accumulation_steps=ga,
    )
