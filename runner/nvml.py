"""Device memory through NVML: what the card holds for this process (CUDA context, allocator, libraries).

Torch-free at import, so that a parent process can read the card without creating a CUDA context.
The sampler reads every card's usage when created (before this process touches CUDA: the baseline),
is bound to torch's device once CUDA runs, then samples in a daemon thread: the card-wide `used`, and
this process's own usage where the driver lists it (it does not in some containers: other PID
namespaces). With `phase_fn` it also keeps each phase's maximum.

    >>> nvml = NvmlSampler(interval_s=0.01, phase_fn=lambda: probe.phase)   # before any CUDA call
    >>> torch.zeros(1, device="cuda"); nvml.bind(0); nvml.start(); ...; nvml.stop()
    >>> nvml.max_process_bytes, nvml.max_used_bytes - nvml.baseline_used_bytes
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any


class NvmlSampler:
    """Device memory read through NVML every `interval_s` in a daemon thread (maxima kept)."""

    def __init__(self, interval_s: float = 0.05, phase_fn: Callable[[], str] | None = None):
        """Reads every card's used memory now, before this process touches CUDA (its baseline)."""
        self.interval_s = interval_s
        self.phase_fn = phase_fn
        self.max_used_bytes = 0
        self.max_process_bytes: int | None = None
        self.used_by_phase: dict[str, int] = {}  # with phase_fn: the card's max `used` per phase
        self.process_by_phase: dict[str, int] = {}  # and this process's
        self.baseline_used_bytes: int | None = None
        self.info: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle = None
        self._baselines: list[int] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._baselines = [int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used)
                               for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as exc:  # no NVML (or no permission): allocator figures only
            self.info = {"nvml": f"unavailable ({type(exc).__name__})"}

    @property
    def bound(self) -> bool:
        return self._handle is not None

    def bind(self, device_index: int) -> None:
        """Pick torch's CUDA device among NVML's cards (initializes CUDA: call after __init__)."""
        if not self._baselines:
            return
        try:
            pynvml = self._nvml
            self._handle = _torch_device_handle(pynvml, device_index)
            self.baseline_used_bytes = self._baselines[pynvml.nvmlDeviceGetIndex(self._handle)]
            self.info = card_info(self._handle)
        except Exception as exc:
            self._handle = None
            self.info = {"nvml": f"unavailable ({type(exc).__name__})"}

    def used_bytes(self) -> int | None:
        """The card's memory in use now (every process), None when unbound."""
        if self._handle is None:
            return None
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def process_bytes(self) -> int | None:
        """This process's device memory now as the driver lists it, or None where it does not list it.
        Unlike the card-wide figure it stays true while other processes share the card."""
        if self._handle is None:
            return None
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
        except Exception:  # not supported in some containers (pid namespaces): device figure only
            return None
        pid = os.getpid()
        for proc in procs:
            if int(proc.pid) == pid and getattr(proc, "usedGpuMemory", None) is not None:
                return int(proc.usedGpuMemory)
        return None

    def _read(self) -> None:
        used, own = self.used_bytes(), self.process_bytes()
        if used is None:
            return
        self.max_used_bytes = max(self.max_used_bytes, used)
        if own is not None:
            self.max_process_bytes = max(self.max_process_bytes or 0, own)
        if self.phase_fn is not None:
            phase = self.phase_fn()
            self.used_by_phase[phase] = max(self.used_by_phase.get(phase, 0), used)
            if own is not None:
                self.process_by_phase[phase] = max(self.process_by_phase.get(phase, 0), own)

    def reset(self) -> None:
        """Forget the maxima (e.g. after loading) and read once."""
        self.max_used_bytes, self.max_process_bytes = 0, None
        self.used_by_phase, self.process_by_phase = {}, {}
        self._read()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        if self._handle is not None and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="vramplan-nvml", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=1.0)
            self._read()
            self._thread = None


def card_info(handle) -> dict[str, Any]:
    """{"name", "memory_bytes", "driver"} of an NVML device handle."""
    import pynvml

    name = pynvml.nvmlDeviceGetName(handle)
    driver = pynvml.nvmlSystemGetDriverVersion()
    return {"name": name.decode() if isinstance(name, bytes) else name,
            "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
            "driver": driver.decode() if isinstance(driver, bytes) else driver}


def first_visible_card() -> dict[str, Any] | None:
    """card_info of the first card CUDA will see (CUDA_VISIBLE_DEVICES: an index or a UUID), read without
    initializing CUDA; None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
        handle = (pynvml.nvmlDeviceGetHandleByIndex(int(first)) if first.isdigit()
                  else pynvml.nvmlDeviceGetHandleByUUID(first))
        return card_info(handle)
    except Exception:
        return None


def _torch_device_handle(pynvml, device_index: int):
    """The NVML handle of torch's CUDA device (PCI bus id, so CUDA_VISIBLE_DEVICES remaps cannot mislead)."""
    import torch

    props = torch.cuda.get_device_properties(device_index)
    if hasattr(props, "pci_bus_id"):
        bus = f"{getattr(props, 'pci_domain_id', 0):08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(bus.encode())
        except Exception:
            pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    ids = [x.strip() for x in visible.split(",") if x.strip()]
    if device_index < len(ids) and ids[device_index].isdigit():
        device_index = int(ids[device_index])
    return pynvml.nvmlDeviceGetHandleByIndex(device_index)
