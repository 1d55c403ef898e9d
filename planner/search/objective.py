"""Scoring one candidate config: its memory against the budget (with a safety margin) and its speed.

A candidate *fits* when its predicted peak stays under budget x (1 - margin) and, with offload, the host
holds what is moved there. Among fitting candidates the search maximizes real (non-pad) tokens per
second (planner.search.throughput).

    >>> ev = Evaluator(spec, setup, space, margin=0.05, lengths=profile)
    >>> cand = ev.candidate(family, config)
    >>> cand.fits, cand.throughput.tokens_per_s
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from planner.hardware.gpu_spec import GpuSetup
from planner.hardware.host_memory import host_budget_bytes, host_need_bytes
from planner.memory.breakdown import gpu_limit_bytes, peak_fits
from planner.model.spec import ModelSpec
from planner.search.lengths import LengthProfile
from planner.search.space import Family, Space
from planner.search.throughput import DEFAULT_EFFICIENCY, Efficiency, Throughput, estimate_throughput
from planner.train_config import TrainConfig

# Safety margin on the predicted peak: the memory model's error against measurements before a
# calibration for the card exists (planner.hardware.calibration.MARGIN_NONE); --margin overrides it.
DEFAULT_MARGIN = 0.05
# Quantize only when it must: a quantized candidate wins over a fitting 16-bit one only when it is this
# much faster (e.g. ZeRO-3 gathering 16-bit weights over PCIe). QLoRA matches 16-bit LoRA on benchmarks
# (Dettmers et al. 2023) but adds quantization error; a small speed gain does not justify it.
QUANTIZED_MUST_BE_FASTER = 1.25

Estimator = Callable[..., Any]


def default_estimator() -> Estimator:
    from planner.memory import estimate_memory

    return estimate_memory


@dataclass(frozen=True)
class StatesOnly:
    """A lower bound that rules a config out without replaying its step: the model states (weights,
    adapters, master weights, optimizer states, gradients, buffers) that the optimizer phase holds at once
    (planner.memory.estimate: that phase's components), before any activation or device overhead."""

    peak_bytes: int
    budget_bytes: int
    host_bytes: int
    components: dict
    lower_bound: bool = True

    @property
    def fits(self) -> bool:
        return False

    def to_json(self) -> dict[str, Any]:
        return {"components": dict(self.components), "peak_bytes_at_least": self.peak_bytes,
                "budget_bytes": self.budget_bytes, "host_bytes": self.host_bytes}


def states_lower_bound(spec: ModelSpec, config: TrainConfig, setup: GpuSetup) -> StatesOnly | None:
    try:
        from planner.memory.zero import model_states
    except ImportError:
        return None
    ms = model_states(spec, config, setup)
    parts = {"weights": ms.weights_bytes, "adapter": ms.adapter_bytes, "master_weights": ms.master_weights_bytes,
             "optimizer_states": ms.optimizer_state_bytes, "gradients": ms.gradient_bytes,
             "buffers": ms.buffer_bytes}
    return StatesOnly(int(sum(parts.values())), int(setup.budget_bytes), int(ms.host_bytes), {k: v for k, v in parts.items() if v})


@dataclass(frozen=True)
class Candidate:
    """One evaluated config. `throughput` is None when it does not fit (not worth timing)."""

    family: Family
    config: TrainConfig
    memory: Any  # planner.memory.MemoryBreakdown
    limit_bytes: int  # budget x (1 - margin)
    fits: bool
    throughput: Throughput | None = None
    why: str = ""  # for runners-up: why it lost to the winner
    host_ok: bool = True

    @property
    def label(self) -> str:
        return self.family.label

    @property
    def tokens_per_s(self) -> float:
        return self.throughput.tokens_per_s if self.throughput else 0.0

    def to_json(self) -> dict[str, Any]:
        c = self.config
        out: dict[str, Any] = {
            "label": self.label,
            "method": c.method,
            "cutoff_len": c.cutoff_len,
            "per_device_train_batch_size": c.per_device_train_batch_size,
            "gradient_accumulation_steps": c.gradient_accumulation_steps,
            "deepspeed_stage": c.deepspeed_stage,
            "offload": c.offload,
            "gradient_checkpointing": c.gradient_checkpointing,
            "peak_bytes": int(self.memory.peak_bytes),
            "limit_bytes": self.limit_bytes,
            "fits": self.fits,
            "host_ok": self.host_ok,
            "host_bytes": int(getattr(self.memory, "host_bytes", 0) or 0),
            "why": self.why,
        }
        if self.throughput is not None:
            out["tokens_per_s"] = round(self.throughput.tokens_per_s, 1)
            out["total_seconds"] = (None if self.throughput.total_seconds is None
                                    else round(self.throughput.total_seconds, 1))
        return out


class Evaluator:
    """Memoized memory and throughput evaluation of configs for one (model, setup, data)."""

    def __init__(self, spec: ModelSpec, setup: GpuSetup, space: Space, *, margin: float,
                 lengths: LengthProfile | None, estimator: Estimator | None = None, epochs: float | None = None,
                 train_share: float = 1.0, efficiency: Efficiency = DEFAULT_EFFICIENCY):
        self.spec, self.setup, self.space = spec, setup, space
        self.margin = margin
        self.lengths = lengths
        self.estimate = estimator or default_estimator()
        # the cheap lower bound is the memory model's own; with another estimator it could disagree
        # (a calibrated estimator is the same model with other device overheads: the bound still holds)
        self.prescreen = estimator is None or estimator is default_estimator() \
            or getattr(estimator, "func", None) is default_estimator()
        self.epochs = epochs
        self.train_share = train_share
        self.efficiency = efficiency
        self.memory_calls = 0
        self._memory: dict[TrainConfig, Any] = {}
        self._speed: dict[TrainConfig, Throughput] = {}

    def memory(self, config: TrainConfig) -> Any:
        hit = self._memory.get(config)
        if hit is None:
            if self.prescreen:
                low = states_lower_bound(self.spec, config, self.setup)
                if low is not None and not peak_fits(low, self.margin):
                    self._memory[config] = low
                    return low
            self.memory_calls += 1
            hit = self.estimate(self.spec, config, self.setup)
            if getattr(hit, "margin", self.margin) != self.margin:
                hit = replace(hit, margin=self.margin)  # so its own .fits / JSON say what the search decided
            self._memory[config] = hit
        return hit

    @property
    def estimated(self) -> dict[TrainConfig, Any]:
        """Configs whose memory is known (estimated or ruled out by the lower bound)."""
        return self._memory

    def limit(self, mem: Any) -> int:
        return gpu_limit_bytes(mem.budget_bytes, self.margin)

    def host_limit_bytes(self) -> int | None:
        """Usable host RAM per node: the same figure the memory model's final check reads."""
        return host_budget_bytes(self.setup)

    def host_ok(self, config: TrainConfig, mem: Any) -> bool:
        budget = self.host_limit_bytes()
        if budget is None:
            return True
        return host_need_bytes(self.setup, int(getattr(mem, "host_bytes", 0) or 0)) <= budget

    def fits(self, config: TrainConfig) -> bool:
        mem = self.memory(config)
        return peak_fits(mem, self.margin) and self.host_ok(config, mem)

    def throughput(self, config: TrainConfig) -> Throughput:
        hit = self._speed.get(config)
        if hit is None:
            hit = self._speed[config] = estimate_throughput(
                self.spec, config, self.setup, lengths=self.lengths, packing=self.space.packing,
                group_by_length=self.space.group_by_length, epochs=self.epochs, train_share=self.train_share,
                efficiency=self.efficiency)
        return hit

    def candidate(self, family: Family, config: TrainConfig, *, timed: bool | None = None) -> Candidate:
        mem = self.memory(config)
        host = self.host_ok(config, mem)
        fits = peak_fits(mem, self.margin) and host
        speed = self.throughput(config) if (fits if timed is None else timed) else None
        return Candidate(family, config, mem, self.limit(mem), fits, speed, host_ok=host)


def score_of(throughput: Throughput | None, quantization_bit: int | None) -> float:
    """Tokens/s, discounted for quantized weights (see QUANTIZED_MUST_BE_FASTER)."""
    tps = throughput.tokens_per_s if throughput is not None else 0.0
    return tps / (QUANTIZED_MUST_BE_FASTER if quantization_bit else 1.0)


def score(c: Candidate) -> float:
    return score_of(c.throughput, c.config.quantization_bit)
