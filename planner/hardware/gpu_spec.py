"""GpuSpec (one card's facts) and GpuSetup (what the plan runs on: cards x count x nodes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator model, as the catalog or NVML describes it."""

    name: str
    memory_bytes: int  # total memory as the driver reports it
    vendor: str = "nvidia"  # nvidia | amd | cpu | generic
    bf16: bool = True
    fp8: bool = False
    bf16_tflops: float = 0.0  # dense (no sparsity) peak
    bandwidth_gbs: float = 0.0
    compute_capability: str | None = None
    source: str = ""

    @property
    def is_cpu(self) -> bool:
        return self.vendor == "cpu"


@dataclass(frozen=True)
class GpuSetup:
    """The hardware a plan is for."""

    gpu: GpuSpec
    count: int = 1  # per node
    nodes: int = 1
    detected: bool = False  # True when read from NVML on this machine
    free_bytes: int | None = None  # per card, when detected
    driver: str | None = None
    # RAM per node the plan is made for (--host-mem, this machine's, or a card-class default: see
    # planner.hardware.host_memory.host_ram_for, which fills in the default when this is None)
    host_ram_bytes: int | None = None
    host_ram_source: str = ""
    note: str | None = None  # e.g. "no GPU found: planning for the default card RTX4090"

    @property
    def world_size(self) -> int:
        return self.count * self.nodes

    @property
    def budget_bytes(self) -> int:
        """What one card may hold for the plan: the free memory NVML reports on this machine's cards (other
        processes may hold the rest), else the card's total."""
        return self.free_bytes if (self.detected and self.free_bytes) else self.gpu.memory_bytes
