"""`plan --simulate`: trace the planned step with fake tensors (the runner; needs the [train] extra) and put the
trace beside the analytic model. Reached from the command line only: the planner core never imports runner/.
"""

from __future__ import annotations

from typing import Any

from planner.model.spec import ModelSpec
from planner.pipeline import Report, Section
from planner.train_config import TrainConfig


def _traceable(train: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """The nearest config fake tensors can run, and what was changed to get it.

    Liger's Triton kernels and DeepSpeed's partitioning have no fake-tensor path (runner.build.
    check_oracle_runnable); the step without them is still architecture-exact for everything else.
    """
    changes, traced = [], train
    if train.use_liger_kernel:
        traced = traced.with_(use_liger_kernel=False)
        changes.append("without Liger Kernel (its Triton kernels have no fake-tensor path; its fused "
                       "cross-entropy would not hold the logits)")
    if train.deepspeed_stage or train.offload != "none":
        traced = traced.with_(deepspeed_stage=0, offload="none")
        changes.append(f"without DeepSpeed ZeRO-{train.deepspeed_stage} (one process holds every state)")
    return traced, changes


def simulate_stage(spec: ModelSpec, report: Report) -> None:
    """--simulate: trace the step with fake tensors (needs torch + transformers, no GPU)."""
    from planner.errors import UserError

    train = report.train or TrainConfig()
    try:
        from runner.simulate import simulate_cli
    except ImportError as exc:
        raise UserError(f"--simulate needs the training extra ({exc.name} is not installed).",
                        "Install it with: pip install 'vramplan[train]'") from None
    traced, changes = _traceable(train)
    result = simulate_cli(spec, traced, traced.per_device_train_batch_size, traced.cutoff_len)
    if changes:
        from planner.memory import estimate_memory

        # Compared with the analytic model of the same traced config, not of the plan.
        result["traced_instead"] = "the planned config " + "; ".join(changes)
        result["traced_config"] = traced.to_json()
        result["analytic_phases"] = estimate_memory(spec, traced, report.setup).to_json().get("phases", {})
        result["analytic_peak_tensor_bytes"] = estimate_memory(spec, traced, report.setup).peak_tensor_bytes
    if not result.get("ok"):
        report.notes.append(f"--simulate could not trace this config ({result.get('reason')}); "
                            "showing the analytic model only. Fake tensors run the CPU kernels: pin "
                            "--quant none to trace a config they can run")
    report.sections["simulation"] = Section(result, lambda console: _render_simulation(result, report, console))


def _render_simulation(result: dict[str, Any], report: Report, console) -> None:
    from rich.table import Table

    from planner.units import gib

    if not result.get("ok"):
        return
    title = "Fake-tensor simulation (architecture-exact, no GPU) vs the analytic model"
    if result.get("traced_instead"):
        # Said before the figures: they are not the plan's own config.
        console.print(f"[yellow]--simulate traced {result['traced_instead']}; both columns are for that "
                      "config.[/]")
        title += " (traced config)"
        predicted, peak = result.get("analytic_phases", {}), result.get("analytic_peak_tensor_bytes")
    else:
        memory = report.breakdown or (report.plan.memory if report.plan else None)
        predicted = memory.to_json().get("phases", {}) if memory is not None else {}
        peak = memory.peak_tensor_bytes if memory is not None else None
    t = Table(title=title, title_justify="left")
    for col in ("phase", "simulated", "analytic"):
        t.add_column(col, justify="right" if col != "phase" else "left")
    for phase, value in result.get("phases", {}).items():
        t.add_row(phase, gib(value), gib(predicted.get(phase)))
    t.add_row("peak (tensors)", gib(result.get("peak_tensor_bytes")), gib(peak))
    console.print(t)
