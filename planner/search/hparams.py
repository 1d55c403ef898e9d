"""Hyper-parameters that do not decide memory, each with a one-line why.

    >>> hp = choose_hparams(config, data, setup=setup, effective_batch=16)
    >>> hp.learning_rate, hp.why["learning_rate"]
    (0.0002, 'QLoRA at batch 16: 2e-4 (QLoRA paper, 7B-13B)')
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from planner.hardware.gpu_spec import GpuSetup
from planner.model.params import count_params
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig

# (learning rate, reference effective batch, source). Square-root scaling around the reference batch
# for Adam-type optimizers: Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient
# Algorithms" (lr ~ sqrt(batch)).
LR_BASE: dict[str, tuple[float, int, str]] = {
    "lora": (1e-4, 16, "LLaMA-Factory's LoRA SFT examples use 1e-4"),
    "qlora": (2e-4, 16, "QLoRA paper (Dettmers et al. 2023): 2e-4 at batch 16 for 7B-13B"),
    "full": (1e-5, 32, "LIMA (Zhou et al. 2023): 1e-5 at batch 32; Alpaca used 2e-5 at 128"),
    "freeze": (1e-5, 32, "as full fine-tuning"),
}
LR_RANGE = {"lora": (5e-5, 4e-4), "qlora": (5e-5, 4e-4), "full": (5e-6, 4e-5), "freeze": (5e-6, 4e-5)}
BIG_MODEL_PARAMS = 30e9  # QLoRA halves the rate for 33B/65B (1e-4)
WARMUP_RATIO = 0.03  # Alpaca and QLoRA recipes
VAL_SHARE = 0.05
VAL_MIN_SAMPLES = 2000  # below this every sample is worth more in training than in a loss curve
VAL_MAX_SAMPLES = 2000  # enough for a stable eval loss; more only slows evaluation
DEFAULT_WARMUP_STEPS = 10  # when the run length is unknown (no data)


@dataclass(frozen=True)
class HParams:
    learning_rate: float
    num_train_epochs: float
    lr_scheduler_type: str
    warmup_ratio: float
    warmup_steps: int
    bf16: bool
    fp16: bool
    lora_rank: int | None
    lora_alpha: int | None
    lora_dropout: float | None
    lora_target: str | None
    val_size: float
    total_steps: int | None = None
    why: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("learning_rate", "num_train_epochs", "lr_scheduler_type",
                                             "warmup_ratio", "warmup_steps", "bf16", "fp16", "val_size",
                                             "total_steps")}
        if self.lora_rank is not None:
            out.update(lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                       lora_target=self.lora_target)
        out["why"] = dict(self.why)
        return out


def lora_rank_for(data) -> tuple[int, str]:
    """Rank by how much there is to learn (tokens). Hu et al. 2021 (LoRA) found r = 4-8 enough for
    GPT-3 adaptation; QLoRA used r = 64 on all linear layers; larger data can use more capacity."""
    if data is None:
        return 16, "no data given: 16, a common middle ground (LoRA paper: 4-8 suffice; QLoRA: 64)"
    tokens = int(data.tokens_total)
    for limit, rank in ((2_000_000, 8), (20_000_000, 16), (200_000_000, 32)):
        if tokens < limit:
            amount = f"{tokens / 1e6:.1f}M" if tokens >= 100_000 else f"{tokens:,}"
            return rank, f"{amount} tokens of data: rank {rank} (small data needs little capacity)"
    return 64, f"{tokens / 1e6:.0f}M tokens: rank 64 (QLoRA's rank for large instruction sets)"


def lora_alpha_for(rank: int) -> tuple[int, str]:
    # LLaMA-Factory sets lora_alpha = 2 x lora_rank when unset (hparams/finetuning_args.py __post_init__).
    return 2 * rank, "2 x rank (LLaMA-Factory's default scaling)"


def lora_shape(data, pinned: dict[str, Any]) -> tuple[dict[str, int], dict[str, str]]:
    """The LoRA rank and alpha, chosen once per plan: ({field: value} for those not pinned, {field: why}
    for both). The search plans with the values; the plan's hyperparameters say the reasons."""
    values: dict[str, int] = {}
    why: dict[str, str] = {}
    if "lora_rank" in pinned:
        rank, why["lora_rank"] = pinned["lora_rank"], "as given"
    else:
        rank, why["lora_rank"] = lora_rank_for(data)
        values["lora_rank"] = rank
    if "lora_alpha" in pinned:
        why["lora_alpha"] = "as given"
    else:
        values["lora_alpha"], why["lora_alpha"] = lora_alpha_for(rank)
    return values, why


# Epochs when the data is unknown (LLaMA-Factory's SFT examples); plan.yaml and --apply use it too, so
# the plan shown, its exports and the run agree.
DEFAULT_EPOCHS = 3.0


def epochs_for(data, given: float | None) -> tuple[float, str]:
    if given is not None:
        return float(given), "as given (--epochs)"
    if data is None:
        return DEFAULT_EPOCHS, f"no data given: {DEFAULT_EPOCHS:g} (LLaMA-Factory's examples)"
    n = data.samples
    if n < 10_000:
        return 3.0, f"{n:,} samples (< 10k): 3 epochs; small sets need repeats"
    if n < 100_000:
        return 2.0, f"{n:,} samples (< 100k): 2 epochs"
    return 1.0, f"{n:,} samples: 1 epoch; more tends to overfit large instruction sets"


def learning_rate_for(spec: ModelSpec, method: str, effective_batch: int) -> tuple[float, str]:
    base, ref, src = LR_BASE[method]
    if method == "qlora" and count_params(spec).total >= BIG_MODEL_PARAMS:
        base, src = 1e-4, "QLoRA paper: 1e-4 for 33B-65B"
    lr = base * math.sqrt(effective_batch / ref)
    lo, hi = LR_RANGE[method]
    lr = min(hi, max(lo, lr))
    lr = float(f"{lr:.2g}")
    scaled = "" if effective_batch == ref else f", sqrt-scaled from batch {ref} to {effective_batch}"
    return lr, f"{base:g} ({src}){scaled}"


def val_size_for(data) -> tuple[float, str]:
    if data is None or data.samples < VAL_MIN_SAMPLES:
        return 0.0, "no validation split: too few samples to spare" if data is not None else "no data given"
    share = min(VAL_SHARE, VAL_MAX_SAMPLES / data.samples)
    share = float(f"{share:.2g}")
    return share, f"{share:g} of {data.samples:,} samples (~{round(share * data.samples):,}) for an eval loss"


def choose_hparams(spec: ModelSpec, config: TrainConfig, data, *, setup: GpuSetup, effective_batch: int,
                   epochs: float | None = None, steps_per_epoch: int | None = None,
                   given: frozenset[str] = frozenset(), lora_why: dict[str, str] | None = None) -> HParams:
    """Learning rate, epochs, schedule, precision, LoRA shape and validation split for `config`.
    `lora_why`: the reasons lora_shape gave when the search chose the rank (else derived the same way)."""
    why: dict[str, str] = {}
    method = config.method
    lr, why["learning_rate"] = learning_rate_for(spec, method, effective_batch)
    n_epochs, why["num_train_epochs"] = epochs_for(data, epochs)
    why["lr_scheduler_type"] = "cosine decay (LLaMA-Factory examples, QLoRA used constant)"
    total = math.ceil(steps_per_epoch * n_epochs) if steps_per_epoch else None
    if total:
        warm = max(1, math.ceil(WARMUP_RATIO * total))
        why["warmup_steps"] = f"{WARMUP_RATIO:g} of {total:,} steps"
    else:
        warm = DEFAULT_WARMUP_STEPS
        why["warmup_steps"] = f"{DEFAULT_WARMUP_STEPS} steps: the run length is unknown without data"
    half = config.amp if config.dtype == "fp32" and config.amp else config.dtype
    bf16, fp16 = half == "bf16", half == "fp16"
    why["precision"] = ("bf16: torch runs it on the CPU (no loss scaling; fastest on CPUs with AVX512-BF16 "
                        "or AMX)" if bf16 and setup.gpu.is_cpu else
                        "bf16: the card supports it (no loss scaling needed)" if bf16 else
                        f"fp16: {setup.gpu.name} has no bf16 support" if fp16 and not setup.gpu.bf16 else
                        f"{half} as configured")
    rank = alpha = None
    dropout = target = None
    if config.is_lora:
        rank, alpha, dropout = config.lora_rank, config.lora_alpha, config.lora_dropout
        if lora_why is None:
            lora_why = lora_shape(data, {k: getattr(config, k) for k in ("lora_rank", "lora_alpha") if k in given})[1]
        why["lora_rank"], why["lora_alpha"] = lora_why["lora_rank"], lora_why["lora_alpha"]
        target = ",".join(config.lora_target)
        why["lora_target"] = ("every linear layer of the decoder (QLoRA: needed to match full fine-tuning)"
                              if target == "all" else "as given")
        why["lora_dropout"] = ("0 (LLaMA-Factory's default): dropout > 0 keeps a copy of every adapter input"
                               if not dropout else "as given")
    val, why["val_size"] = val_size_for(data)
    return HParams(learning_rate=lr, num_train_epochs=n_epochs, lr_scheduler_type="cosine",
                   warmup_ratio=WARMUP_RATIO, warmup_steps=warm, bf16=bf16, fp16=fp16, lora_rank=rank,
                   lora_alpha=alpha, lora_dropout=dropout, lora_target=target, val_size=val, total_steps=total,
                   why=why)
