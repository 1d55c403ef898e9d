"""Accuracy gates: the analytic memory model against the two CPU oracles, phase by phase.

Oracle 1 (tensor accounting of a real CPU step, tiny models): within 2% of every phase.
Oracle 2 (fake-tensor simulation of full-size checkpoints): within 3%.
A miss means the model is wrong somewhere: find the op that differs (runner.accounting's phase
categories help), fix the recipe, never the tolerance.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from gate_cases import FAKE_CASES, TENSOR_CASES, TOLERANCE_FAKE, TOLERANCE_TENSOR, Case  # noqa: E402

from planner.hardware.gpu_spec import GpuSetup, GpuSpec  # noqa: E402
from planner.memory import estimate_memory  # noqa: E402

CPU = GpuSetup(GpuSpec(name="cpu", memory_bytes=64 << 30, vendor="cpu"))


def _errors(case: Case, measured) -> dict[str, float]:
    predicted = estimate_memory(case.spec(), case.train_config(), CPU)
    out = {p: (predicted.phases[p] - measured.phases[p]) / measured.phases[p] for p in measured.phases}
    out["peak"] = (predicted.peak_tensor_bytes - measured.peak_tensor_bytes) / measured.peak_tensor_bytes
    return out


@pytest.mark.parametrize("case", TENSOR_CASES, ids=lambda c: c.name)
def test_tensor_accounting_gate(case: Case):
    from runner.accounting import measure_step
    from runner.build import cpu_4bit_available

    if case.train.get("quantization_bit") and not cpu_4bit_available():
        pytest.skip("4-bit on the CPU needs bitsandbytes >= 0.48")
    measured = measure_step(case.spec(), case.train_config(), batch_size=case.batch_size, seq_len=case.seq_len,
                            warm_start=True)
    errors = _errors(case, measured)
    bad = {p: f"{e:+.2%}" for p, e in errors.items() if abs(e) > TOLERANCE_TENSOR}
    assert not bad, f"{case.name}: analytic vs tensor accounting off by {bad} (measured {measured.phases})"


@pytest.mark.parametrize("case", FAKE_CASES, ids=lambda c: c.name)
def test_fake_tensor_gate(case: Case):
    from runner.simulate import simulate_step

    measured = simulate_step(case.spec(), case.train_config(), batch_size=case.batch_size, seq_len=case.seq_len)
    errors = _errors(case, measured)
    bad = {p: f"{e:+.2%}" for p, e in errors.items() if abs(e) > TOLERANCE_FAKE}
    assert not bad, f"{case.name}: analytic vs fake-tensor simulation off by {bad} (measured {measured.phases})"
