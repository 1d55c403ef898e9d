"""The CUDA phase bookkeeping, driven by a stand-in for torch.cuda's peak counters."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmarks.measure_case import CudaPhases


class FakeCuda:
    def __init__(self, peaks):
        self.peaks, self.i, self.resets = list(peaks), 0, 0

    def max_memory_allocated(self):
        return self.peaks[self.i][0]

    def max_memory_reserved(self):
        return self.peaks[self.i][1]

    def reset_peak_memory_stats(self):
        self.resets += 1
        self.i = min(self.i + 1, len(self.peaks) - 1)


def test_phase_peaks_are_kept_per_step_and_phase():
    # the counters seen at each close: load, ready (before the first forward), (fwd, bwd, opt, end) x 2
    cuda = FakeCuda([(0, 0), (50, 60), (5, 60), (70, 80), (90, 100), (95, 100), (20, 100),
                     (85, 110), (99, 120), (40, 120), (10, 120)])
    probe = CudaPhases(SimpleNamespace(cuda=cuda))
    probe.begin_load()
    probe.start()
    for _ in range(2):
        for phase in ("forward", "backward", "optimizer", "end"):
            probe.mark(phase)
    probe.stop()
    s = probe.summary()
    assert s["phases"]["load"] == 50
    assert s["phases"]["forward"] == 85 and s["phases"]["backward"] == 99 and s["phases"]["optimizer"] == 95
    assert "ready" not in s["phases"] and s["phases"]["between_steps"] == 20
    assert s["phases_reserved"]["backward"] == 120
    assert [row["step"] for row in s["steps"]] == [1, 2] and s["steps"][0]["forward"] == 70


def test_device_peaks_come_from_the_nvml_sampler():
    """_fill_peaks reads runner.nvml's sampler: this process's usage when the driver lists it, else the card's
    usage over its baseline; per phase either way."""
    from benchmarks.measure_case import _fill_peaks

    summary = {"phases": {"load": 10, "forward": 40, "backward": 50, "optimizer": 30},
               "phases_reserved": {"load": 12, "forward": 60, "backward": 64, "optimizer": 64}}
    listed = SimpleNamespace(baseline_used_bytes=100, max_process_bytes=90, process_by_phase={"backward": 90},
                             max_used_bytes=300, used_by_phase={"backward": 300})
    res = {"phases": {}}
    _fill_peaks(res, summary, listed, cuda=True)
    assert res["peak"] == {"phase": "backward", "allocated_bytes": 50, "reserved_bytes": 64, "device_bytes": 90,
                           "device_source": "process", "device_total_delta_bytes": 200}
    assert res["phases"]["backward"] == {"allocated_bytes": 50, "reserved_bytes": 64, "device_bytes": 90}
    unlisted = SimpleNamespace(baseline_used_bytes=100, max_process_bytes=None, process_by_phase={},
                               max_used_bytes=300, used_by_phase={"backward": 300, "forward": 250})
    res = {"phases": {}}
    _fill_peaks(res, summary, unlisted, cuda=True)
    assert (res["peak"]["device_bytes"], res["peak"]["device_source"]) == (200, "device")
    assert res["phases"]["forward"]["device_bytes"] == 150


def test_stack_record_keeps_its_keys():
    """The stack the measurements (and the calibration files fitted from them) record."""
    torch = pytest.importorskip("torch")
    from runner.report import measurement_stack

    keys = list(measurement_stack(torch))
    expected = ["torch", "cuda", "python", "transformers", "peft", "accelerate", "bitsandbytes", "deepspeed",
                "liger_kernel", "PYTORCH_CUDA_ALLOC_CONF"]
    assert [k for k in keys if k != "cudnn"] == expected


def test_context_and_card_come_from_the_nvml_sampler():
    from benchmarks.measure_case import context_bytes, gpu_info

    props = SimpleNamespace(name="torch name", total_memory=80, major=9, minor=0)
    torch = SimpleNamespace(cuda=SimpleNamespace(memory_reserved=lambda: 30, get_device_properties=lambda i: props))
    listed = SimpleNamespace(process_bytes=lambda: 100, used_bytes=lambda: 500, baseline_used_bytes=200, bound=True,
                             info={"name": "NVML name", "memory_bytes": 81, "driver": "600.1"})
    assert context_bytes(torch, listed) == 70  # this process's usage - the allocator's
    unlisted = SimpleNamespace(process_bytes=lambda: None, used_bytes=lambda: 500, baseline_used_bytes=200)
    assert context_bytes(torch, unlisted) == 270  # the card's usage over its baseline - the allocator's
    assert gpu_info(torch, listed) == {"name": "NVML name", "memory_bytes": 81, "compute_capability": "9.0",
                                       "vendor": "nvidia", "driver": "600.1"}
    unbound = SimpleNamespace(bound=False, info={"nvml": "unavailable (NVMLError)"})
    assert gpu_info(torch, unbound) == {"name": "torch name", "memory_bytes": 80, "compute_capability": "9.0",
                                        "vendor": "nvidia"}
