"""Harness-shaped measurement results made from known device constants (shared by the benchmark tests)."""

from __future__ import annotations

import random

from benchmarks.matrix import Case, resolve_model
from planner.hardware.calibration import DeviceOverheads

MIB, GIB = 1 << 20, 1 << 30
TRUE = DeviceOverheads(cuda_context_bytes=480 * MIB, cublas_workspace_bytes=64 * MIB,
                       kernel_temp_bytes_per_token_hidden=4.0, allocator_slack_ratio=0.03,
                       allocator_slack_bytes=200 * MIB)
GPU = {"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85520809984, "compute_capability": "9.0", "vendor": "nvidia"}
STACK = {"torch": "2.11.0", "cuda": "13.0", "transformers": "5.17.0", "PYTORCH_CUDA_ALLOC_CONF": None}


def fake_results(cases: list[Case], tensors: dict[str, int], seed: int = 0) -> list[dict]:
    """What harness.py writes, for measurements that follow TRUE exactly up to 1 MiB of noise."""
    rng = random.Random(seed)
    out = []
    for c in cases:
        hidden = resolve_model(c.model).hidden_size
        alloc = TRUE.allocated_bytes(tensors[c.name], tokens=c.tokens, hidden=hidden) + rng.gauss(0, MIB)
        reserved = alloc * (1 + TRUE.allocator_slack_ratio) + TRUE.allocator_slack_bytes + rng.gauss(0, MIB)
        device = reserved + TRUE.cuda_context_bytes + rng.gauss(0, MIB)
        out.append({"config": c.to_json(), "status": "ok", "device": "cuda", "gpu": GPU, "stack": STACK,
                    "tokens": c.tokens, "hidden_size": hidden,
                    "peak": {"phase": "backward", "allocated_bytes": int(alloc), "reserved_bytes": int(reserved),
                             "device_bytes": int(device)}})
    out.append({"config": Case("oom-case", "tiny").to_json(), "status": "oom", "device": "cuda"})
    return out
