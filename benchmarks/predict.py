"""Predictions to compare with measurements: vramplan's analytic model, or the fake-tensor oracle.

    >>> predict_tensors(case, predictor="analytic")
    {'peak_tensor_bytes': 17179869184, 'peak_bytes': ..., 'predictor': 'analytic'}

Both predict the live tensor bytes of a step (device independent); benchmarks/calibrate.py fits the
device constants on top of them, benchmarks/accuracy.py adds those constants back.
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.matrix import Case
from planner.hardware.gpu_spec import GpuSetup, GpuSpec

PREDICTORS = ("auto", "analytic", "simulate")


def analytic_available() -> bool:
    try:
        from planner.memory import estimate_memory  # noqa: F401
    except ImportError:
        return False
    return True


H100 = GpuSpec(name="H100-SXM-80G", memory_bytes=85520809984, compute_capability="9.0")
CPU = GpuSpec(name="cpu", memory_bytes=16 << 30, vendor="cpu")


def predict_tensors(case: Case, *, predictor: str = "auto", gpu: GpuSpec | None = None,
                    device: str = "cuda") -> dict[str, Any] | None:
    """{"peak_tensor_bytes", "peak_bytes" (analytic only), "predictor"} or None when it cannot predict.

    device: the analytic model's kernels differ by device (CUDA sdpa vs the CPU flash kernel), so a
    CPU measurement is predicted for the CPU; gpu: the card (default an H100; only overheads depend on it).
    """
    if predictor == "auto":
        predictor = "analytic" if analytic_available() else "simulate"
    spec, train = case.spec(), case.train_config()
    if predictor == "analytic":
        from planner.memory import estimate_memory

        setup = GpuSetup(gpu=CPU if device == "cpu" else (gpu or H100))
        try:
            mb = estimate_memory(spec, train, setup)
        except Exception as e:  # a model the analytic model cannot do yet: say so, keep going
            print(f"analytic prediction failed for {case.name}: {type(e).__name__}: {e}", file=sys.stderr)
            return None
        out = {"peak_tensor_bytes": int(mb.peak_tensor_bytes), "predictor": "analytic"}
        if getattr(mb, "peak_bytes", None) is not None:
            out["peak_bytes"] = int(mb.peak_bytes)
        return out
    if predictor == "simulate":
        from runner.build import NeedsCuda
        from runner.simulate import simulate_step

        try:
            mem = simulate_step(spec, train, batch_size=train.per_device_train_batch_size, seq_len=train.cutoff_len)
        except NeedsCuda:
            return None
        return {"peak_tensor_bytes": int(mem.peak_tensor_bytes), "predictor": "simulate"}
    raise ValueError(f"predictor {predictor!r}: one of {PREDICTORS}")
