"""Memory measurement of a training run, per phase: CUDA allocator + NVML on a GPU, tensor accounting on CPU.

Phases follow runner.step: "load" (the model in memory), then per optimizer step "forward",
"backward" (one pair per micro-batch) and "optimizer" (clipping, step, zero_grad). The trainer
announces them through `mark(phase)`; the probe keeps each phase's peak (max over steps).

- CudaProbe: torch.cuda.max_memory_allocated / max_memory_reserved since the previous mark
  (reset_peak_memory_stats at each mark, so each figure is one phase's peak), and NVML device
  memory sampled every 50 ms in a thread (runner.nvml: device `used`, and this process's usage where the driver
  lists it) for the true footprint: allocator + CUDA context + library workspaces.
- CpuProbe: the tensor-accounting oracle (runner.accounting's StorageTracker) around the steps.
  With a budget (the planned card's memory), crossing it raises SimulatedOOM at the end of the
  phase that crossed it, so out-of-memory handling is testable without a GPU.

    >>> probe = CpuProbe(model, optimizer, checkpointing=True, budget_bytes=24 << 30)
    >>> probe.start(); probe.mark("forward"); ...; probe.summary()
"""

from __future__ import annotations

from typing import Any

import torch

from runner.accounting import CATEGORIES, make_tracker
from runner.nvml import NvmlSampler

STEP_PHASES = ("forward", "backward", "optimizer")


class SimulatedOOM(torch.OutOfMemoryError):
    """Tracked live tensor bytes passed the planned card's memory (CPU runs)."""

    def __init__(self, message: str, phase: str, step: int):
        super().__init__(message)
        self.phase, self.step = phase, step


class CpuProbe:
    """Tensor accounting of the training steps on the CPU (reuses runner.accounting's tracker)."""

    kind = "cpu"

    def __init__(self, model, optimizer, *, checkpointing: bool, budget_bytes: int | None = None):
        self.tracker = make_tracker(model, optimizer, checkpointing=checkpointing)
        self.budget_bytes = budget_bytes
        self.active = False
        self.phase = "load"
        self.steps_done = 0

    @property
    def step(self) -> int:
        return self.tracker.step

    def start(self) -> None:
        """Register what exists before training (weights, buffers, optimizer state on resume)."""
        t = self.tracker
        t.register_model({})
        if t.optimizer.state:  # resumed from a checkpoint: states exist before the first step
            t.register_warm_state()
        self._check(t.phase)

    def track_inputs(self, tensors) -> None:
        for x in tensors:
            self.tracker.track(x, "inputs")

    def mark(self, phase: str) -> None:
        t = self.tracker
        if phase == "forward" and not self.active:
            t.__enter__()  # the mode is on from a step's first forward to its end
            self.active = True
        if not self.active:
            return
        ended = self.phase
        t.mark(phase)
        self.phase = phase
        if phase == "end":
            self.steps_done = t.step
            self.stop()
        self._check(ended)

    def stop(self) -> None:
        if self.active:
            self.tracker.__exit__(None, None, None)
            self.active = False

    def _check(self, phase: str) -> None:
        if self.budget_bytes is None or phase == "end":
            return
        peak = self.tracker.peaks.get((self.tracker.step, phase), (0, 0))[0]
        if peak > self.budget_bytes:
            self.stop()
            raise SimulatedOOM(
                f"simulated out of memory: {peak:,} tensor bytes live in {phase} (step {self.tracker.step}) "
                f"> budget {self.budget_bytes:,}", phase=phase, step=self.tracker.step)

    def summary(self) -> dict[str, Any]:
        """Measured figures: peak_tensor_bytes, per-phase peaks, categories at the peak, per step."""
        t = self.tracker
        phases: dict[str, int] = {}
        best = (-1, "load", 0, 0)  # bytes, phase, tick, step
        per_step: dict[int, dict[str, int]] = {}
        for (step, phase), (nbytes, tick) in t.peaks.items():
            if phase == "end":  # checkpoint saving and logging between steps: not training memory
                continue
            if phase == "warm":  # optimizer states loaded from a checkpoint: part of what was loaded
                phase = "load"
            phases[phase] = max(phases.get(phase, 0), nbytes)
            if step:
                per_step.setdefault(step, {})[phase] = nbytes
            if nbytes > best[0]:
                best = (nbytes, phase, tick, step)
        categories = {k: v for k, v in t.categories_at(best[2]).items() if k in CATEGORIES}
        return {
            "peak_tensor_bytes": best[0],
            "peak_phase": best[1],
            "peak_step": best[3],
            "phases": {p: phases[p] for p in ("load", *STEP_PHASES) if p in phases},
            "components": group_categories(categories),
            "categories": categories,
            "activation_bytes": max(t.saved.values(), default=0),
            "steps": [{"step": s, **per_step[s]} for s in sorted(per_step)],
            "steps_measured": self.steps_done,
            "method": "tensor accounting (TorchDispatchMode over every aten op)",
        }


def group_categories(c: dict[str, int]) -> dict[str, int]:
    """Tensor-accounting categories in the memory model's component names (planner.memory), so that
    report.json can put them side by side: parameters (frozen, trainable, buffers), optimizer states,
    gradients, the batch, and everything else alive at the peak (activations, recomputation, temporaries)."""
    return {
        "weights": c.get("weights", 0) + c.get("trainable", 0),
        "optimizer_states": c.get("optimizer_state", 0),
        "gradients": c.get("gradients", 0),
        "batch": c.get("inputs", 0),
        "activations_and_temporaries": sum(c.get(k, 0) for k in ("activations", "recomputed", "temporaries",
                                                                   "other")),
    }


class CudaProbe:
    """Allocator peaks per phase (reset between phases) and NVML's device footprint."""

    kind = "cuda"

    def __init__(self, device_index: int):
        """Create before any CUDA call of the process: NVML's baseline then excludes nothing of ours."""
        self.device = device_index
        self.nvml = NvmlSampler()
        self.phase = "load"
        self.step = 0
        self.steps_done = 0
        self.peaks: dict[tuple[int, str], tuple[int, int]] = {}  # (step, phase) -> (allocated, reserved)
        self.after: dict[str, int] = {}

    def begin_load(self) -> None:
        """Before the model is loaded: start sampling, zero the allocator's peaks."""
        self.nvml.bind(self.device)
        self.nvml.start()
        torch.cuda.reset_peak_memory_stats(self.device)

    def start(self) -> None:
        """After loading (model, optimizer): close the load phase."""
        self._close("load")
        self.after["load_allocated_bytes"] = torch.cuda.memory_allocated(self.device)

    def track_inputs(self, tensors) -> None:
        pass

    def _close(self, phase: str) -> None:
        alloc = torch.cuda.max_memory_allocated(self.device)
        reserved = torch.cuda.max_memory_reserved(self.device)
        key = (self.step, phase)
        old = self.peaks.get(key, (0, 0))
        self.peaks[key] = (max(old[0], alloc), max(old[1], reserved))
        torch.cuda.reset_peak_memory_stats(self.device)

    def mark(self, phase: str) -> None:
        self._close(self.phase)
        if phase == "forward" and self.phase in ("load", "end"):
            self.step += 1
        if phase == "end":
            self.steps_done = self.step
            if self.step == 1:
                self.after["first_step_allocated_bytes"] = torch.cuda.memory_allocated(self.device)
                self.after["first_step_reserved_bytes"] = torch.cuda.memory_reserved(self.device)
        self.phase = phase

    def stop(self) -> None:
        self._close(self.phase)
        self.nvml.stop()

    def summary(self) -> dict[str, Any]:
        phases: dict[str, int] = {}
        reserved: dict[str, int] = {}
        best = (-1, "load", 0)
        per_step: dict[int, dict[str, int]] = {}
        for (step, phase), (alloc, res) in self.peaks.items():
            name = "between_steps" if phase == "end" else phase
            phases[name] = max(phases.get(name, 0), alloc)
            reserved[name] = max(reserved.get(name, 0), res)
            if step and phase != "end":
                per_step.setdefault(step, {})[phase] = alloc
            if alloc > best[0]:
                best = (alloc, name, step)
        n = self.nvml
        device = n.max_process_bytes
        if device is None and n.baseline_used_bytes is not None and n.max_used_bytes:
            device = n.max_used_bytes - n.baseline_used_bytes
        out: dict[str, Any] = {
            "peak_tensor_bytes": best[0],
            "peak_reserved_bytes": max(reserved.values(), default=0),
            "peak_phase": best[1],
            "peak_step": best[2],
            "phases": {p: phases[p] for p in ("load", *STEP_PHASES, "between_steps") if p in phases},
            "phases_reserved": {p: reserved[p] for p in ("load", *STEP_PHASES, "between_steps") if p in reserved},
            "steps": [{"step": s, **per_step[s]} for s in sorted(per_step)],
            "steps_measured": self.steps_done,
            **self.after,
            "nvml": dict(n.info),
            "method": "torch.cuda.max_memory_allocated/reserved per phase; NVML every 50 ms",
        }
        if device is not None:
            out["peak_device_bytes"] = int(device)
            out["device_used_max_bytes"] = n.max_used_bytes
            out["device_used_baseline_bytes"] = n.baseline_used_bytes
            out["device_bytes_source"] = ("NVML per-process usage" if n.max_process_bytes is not None
                                          else "NVML device used minus the baseline before loading")
        return out

