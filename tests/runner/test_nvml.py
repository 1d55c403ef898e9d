"""runner.nvml against a stand-in NVML: baseline before CUDA, per-process and per-phase maxima, reset."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

from runner.nvml import NvmlSampler, first_visible_card

GIB = 1 << 30


class FakeNvml:
    """Two cards; card 1's `used` and the processes listed on it are set by the test."""

    def __init__(self):
        self.used = [5 * GIB, 2 * GIB]
        self.procs: list = []

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return {"GPU-b": 1}[uuid]

    def nvmlDeviceGetIndex(self, handle):
        return handle

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=self.used[handle], total=80 * GIB)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return self.procs

    def nvmlDeviceGetName(self, handle):
        return b"Card" if handle else "Other"

    def nvmlSystemGetDriverVersion(self):
        return "600.1"


@pytest.fixture
def nvml(monkeypatch):
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr("runner.nvml._torch_device_handle", lambda pynvml, index: 1)  # torch's device 0 is card 1
    return fake


def test_phases_process_and_reset(nvml):
    phase = ["load"]
    s = NvmlSampler(interval_s=0.01, phase_fn=lambda: phase[0])
    nvml.used[1] = 3 * GIB  # CUDA starts after the baseline was read
    s.bind(0)
    assert s.baseline_used_bytes == 2 * GIB and s.info == {"name": "Card", "memory_bytes": 80 * GIB,
                                                           "driver": "600.1"}
    assert s.process_bytes() is None  # not listed (another PID namespace): the card figure only
    s._read()
    nvml.procs = [SimpleNamespace(pid=os.getpid() + 1, usedGpuMemory=9 * GIB),
                  SimpleNamespace(pid=os.getpid(), usedGpuMemory=1 * GIB)]
    s.reset()  # after loading: the load phase's maxima are forgotten
    assert (s.max_used_bytes, s.max_process_bytes, s.used_by_phase) == (3 * GIB, 1 * GIB, {"load": 3 * GIB})
    phase[0] = "forward"
    nvml.used[1], nvml.procs[1].usedGpuMemory = 7 * GIB, 4 * GIB
    s._read()
    phase[0] = "optimizer"
    nvml.used[1], nvml.procs[1].usedGpuMemory = 6 * GIB, 3 * GIB
    s._read()
    assert s.used_by_phase == {"load": 3 * GIB, "forward": 7 * GIB, "optimizer": 6 * GIB}
    assert s.process_by_phase == {"load": 1 * GIB, "forward": 4 * GIB, "optimizer": 3 * GIB}
    assert (s.max_used_bytes, s.max_process_bytes) == (7 * GIB, 4 * GIB)


def test_without_nvml_nothing_is_read(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    s = NvmlSampler()
    s.bind(0)
    s.start()
    s.reset()
    s.stop()
    assert not s.bound and s.used_bytes() is None and s.max_process_bytes is None
    assert s.info["nvml"].startswith("unavailable")
    assert first_visible_card() is None


def test_first_visible_card_follows_cuda_visible_devices(nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-b,GPU-a")
    assert first_visible_card() == {"name": "Card", "memory_bytes": 80 * GIB, "driver": "600.1"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert first_visible_card()["name"] == "Other"
