"""MemoryBreakdown: the memory model's answer for one (model, config, setup), as one frozen value.

`components` is what one GPU holds at the peak phase (they add up to `peak_bytes`); `phases` gives the
peak of each phase (tensor bytes, device overheads excluded) so the worst moment is visible.

    >>> mb = estimate_memory(spec, train, setup)
    >>> mb.peak_bytes, mb.fits, mb.to_json()["phases"]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from planner.units import gib

PHASES = ("load", "forward", "backward", "optimizer")


def gpu_limit_bytes(budget_bytes: int, margin: float) -> int:
    """The device peak a plan may reach on a card of `budget_bytes` with a safety `margin`."""
    return int(budget_bytes * (1.0 - margin))


def peak_fits(memory, margin: float) -> bool:
    """The device verdict, the same for the memory model, the search and `--check`: the predicted peak of
    `memory` (anything with peak_bytes and budget_bytes) within the budget less the margin."""
    return memory.peak_bytes <= gpu_limit_bytes(memory.budget_bytes, margin)


@dataclass(frozen=True)
class MemoryBreakdown:
    components: dict[str, int]  # bytes at the peak phase, device overheads included; sums to peak_bytes
    phases: dict[str, int]  # peak live tensor bytes of each phase
    phase_components: dict[str, dict[str, int]]  # the components of every phase
    peak_phase: str
    peak_tensor_bytes: int  # max over phases: what torch's allocator must hand out
    peak_bytes: int  # peak_tensor_bytes + device overheads: what the card must hold
    budget_bytes: int  # the card's memory (free memory when detected)
    # the device peak (peak_bytes, what nvidia-smi shows and what the plan is checked against) in layers:
    allocated_bytes: int = 0  # torch.cuda.max_memory_allocated(): live tensors + workspaces + kernel temporaries
    reserved_bytes: int = 0  # torch.cuda.max_memory_reserved(): allocated + the caching allocator's slack
    host_bytes: int = 0  # host RAM per node for ZeRO offload (pinned: pin_memory in the DeepSpeed config)
    host_budget_bytes: int | None = None  # usable host RAM per node (planner.hardware.host_memory); None on a CPU
    host_process_bytes: int = 0  # host RAM of the node's GPU processes before any offload
    host_source: str = ""  # where the node's RAM figure comes from
    margin: float = 0.0  # safety margin on the device peak: fits means peak <= budget x (1 - margin)
    batch_size: int = 1
    seq_len: int = 0
    tokens: int = 0
    device: str = "cuda"
    overheads_source: str = ""
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    # for the lazily computed activations-per-1K-tokens figures
    inputs: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    # activations_per_1k_tokens of these inputs, computed when asked (set by planner.memory.estimate)
    per_1k: Callable[[], dict[str, int]] | None = field(default=None, compare=False, repr=False)

    @property
    def total(self) -> int:
        return self.peak_bytes

    @property
    def headroom_bytes(self) -> int:
        return self.budget_bytes - self.peak_bytes

    @property
    def limit_bytes(self) -> int:
        """The most the device peak may reach: the budget less the safety margin."""
        return gpu_limit_bytes(self.budget_bytes, self.margin)

    @property
    def host_need_bytes(self) -> int:
        return self.host_process_bytes + self.host_bytes

    @property
    def host_fits(self) -> bool:
        return self.host_budget_bytes is None or self.host_need_bytes <= self.host_budget_bytes

    @property
    def fits_budget(self) -> bool:
        """The device peak fits the card's memory (the margin not counted)."""
        return self.peak_bytes <= self.budget_bytes

    @property
    def fits(self) -> bool:
        """Every budget holds: device peak within the margin, and host RAM. The one verdict the search,
        the table, the JSON and the exit status use."""
        return peak_fits(self, self.margin) and self.host_fits

    def shortfalls(self) -> list[str]:
        """Why it does not fit, one line per budget that fails (empty when it fits); amounts are positive."""
        out = []
        if self.peak_bytes > self.budget_bytes:
            out.append(f"GPU memory: needs {gib(self.peak_bytes, unit=False)} GiB of {gib(self.budget_bytes, unit=False)} GiB, "
                       f"{gib(self.peak_bytes - self.budget_bytes, unit=False)} GiB over")
        elif self.peak_bytes > self.limit_bytes:
            out.append(f"safety margin: needs {gib(self.peak_bytes, unit=False)} GiB, within the {gib(self.budget_bytes, unit=False)} GiB "
                       f"card but over the {gib(self.limit_bytes, unit=False)} GiB limit of the {self.margin:.0%} margin "
                       f"(by {gib(self.peak_bytes - self.limit_bytes, unit=False)} GiB)")
        if not self.host_fits:
            out.append(f"host RAM: needs {gib(self.host_need_bytes, unit=False)} GiB per node of {gib(self.host_budget_bytes, unit=False)} "
                       f"GiB usable, {gib(self.host_need_bytes - self.host_budget_bytes, unit=False)} GiB over")
        return out

    def activations_per_1k_tokens(self) -> dict[str, int]:
        """Peak growth per 1,000 tokens of one sequence (batch 1 at this seq_len), for the four
        combinations of Liger Kernel and activation checkpointing."""
        return self.per_1k() if self.per_1k is not None else {}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "components": dict(self.components),
            "phases": dict(self.phases),
            "peak_phase": self.peak_phase,
            "peak_tensor_bytes": self.peak_tensor_bytes,
            "peak_bytes": self.peak_bytes,
            "peak_allocated_bytes": self.allocated_bytes,
            "peak_reserved_bytes": self.reserved_bytes,
            "peak_device_bytes": self.peak_bytes,
            "budget_bytes": self.budget_bytes,
            "margin": self.margin,
            "limit_bytes": self.limit_bytes,
            "fits": self.fits,
            "fits_budget": self.fits_budget,
            "host_fits": self.host_fits,
            "does_not_fit": self.shortfalls(),
            "headroom_bytes": self.headroom_bytes,
            "host_bytes": self.host_bytes,
            "host_pinned_bytes": self.host_bytes,
            "host_process_bytes": self.host_process_bytes,
            "host_need_bytes": self.host_need_bytes,
            "host_budget_bytes": self.host_budget_bytes,
            "host_source": self.host_source,
            "activations_per_1k_tokens": self.activations_per_1k_tokens(),
            "phase_components": {p: dict(c) for p, c in self.phase_components.items()},
            "batch": {"batch_size": self.batch_size, "seq_len": self.seq_len, "tokens": self.tokens},
            "device": self.device,
            "overheads_source": self.overheads_source,
            "notes": list(self.notes),
        }
        out.update(self.extra)
        return out
