"""One `plan` run: resolve the inputs, compute, and collect what the renderers show.

resolve (model, GPUs, data) -> pinned settings -> search (or the fixed config) -> exports / apply.
The Report keeps the typed values (for the table) and builds the JSON object (for --format json) from
them, so the two outputs cannot disagree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from planner.hardware.gpu_spec import GpuSetup
from planner.hardware.gpus import resolve_setup
from planner.model.params import ParamCounts, active_params, count_params
from planner.model.resolve import resolve_model_noted
from planner.model.spec import ModelSpec
from planner.request import PlanRequest
from planner.train_config import TrainConfig
from planner.units import gib


@dataclass
class Section:
    """A JSON value plus an optional renderer, for stages whose result type has no render()."""

    value: dict[str, Any]
    renderer: Any = None

    def to_json(self) -> dict[str, Any]:
        return self.value

    def render(self, console) -> None:
        if self.renderer is not None:
            self.renderer(console)


@dataclass
class Report:
    model: ModelSpec
    params: ParamCounts
    params_active: int
    setup: GpuSetup
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)  # data, plan, simulation, exports, ...
    params_trainable: int | None = None
    exit_code: int = 0
    plan: Any = None  # planner.search.Plan when the search ran
    breakdown: Any = None  # planner.memory.MemoryBreakdown of --fixed
    train: TrainConfig | None = None
    model_note: str | None = None  # a catalog entry stood in for the name given: said under the model table

    def to_json(self) -> dict[str, Any]:
        m, s = self.model, self.setup
        out: dict[str, Any] = {
            "model": {
                "name": m.name,
                "hub_id": m.hub_id,
                "source": m.source,
                "model_type": m.model_type,
                "params_total": self.params.total,
                "params_trainable": self.params.total if self.params_trainable is None else self.params_trainable,
                "params_active": self.params_active,
                "params_by_group": self.params.to_json(),
                "layers": m.num_layers,
                "hidden_size": m.hidden_size,
                "vocab_size": m.vocab_size,
                "max_position_embeddings": m.max_position_embeddings,
            },
            "gpu": {
                "name": s.gpu.name,
                "count": s.count,
                "nodes": s.nodes,
                "memory_bytes": s.gpu.memory_bytes,
                "detected": s.detected,
                "bf16": s.gpu.bf16,
                "bf16_tflops": s.gpu.bf16_tflops,
            },
        }
        for key, value in self.sections.items():
            value = value.to_json() if hasattr(value, "to_json") else value
            if key == "plan":  # the plan's keys (config, memory, throughput, ...) sit at the top level
                out.update(value)
            else:
                out[key] = value
        if self.notes:
            out["notes"] = list(self.notes)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        out["exit_code"] = self.exit_code
        return out


def _data_stage(spec: ModelSpec, request: PlanRequest, report: Report):
    if request.data is None:
        return None
    from planner.data import analyze, render_data

    stats = analyze(request.data, spec, progress=request.progress)
    report.sections["data"] = Section(stats.to_json(), lambda console: render_data(stats, console))
    return stats


def run_plan(request: PlanRequest) -> Report:
    spec, model_note = resolve_model_noted(request.model, trust_remote_code=request.trust_remote_code)
    setup = resolve_setup(request.gpu, gpus=request.gpus, nodes=request.nodes, host_mem=request.host_mem)
    report = Report(model=spec, params=count_params(spec), params_active=active_params(spec), setup=setup)
    if model_note:
        report.model_note = model_note
        report.notes.append(model_note)
    if setup.note:
        report.notes.append(setup.note)

    if not setup.gpu.is_cpu:
        from planner.memory.overheads import ALLOC_CONF, allocator_setting

        expandable, line = allocator_setting()
        report.notes.append(line)
        report.sections["allocator"] = {ALLOC_CONF: os.environ.get(ALLOC_CONF), "expandable_segments": expandable,
                                        "note": line}
    choice = _calibration_stage(setup, request, report)
    stats = _data_stage(spec, request, report)
    pinned = request.pinned
    if setup.gpu.is_cpu and pinned.get("optim") == "adamw_torch":
        # torch.optim.AdamW defaults to foreach only when every parameter is on CUDA
        # (torch/optim/optimizer.py _default_to_fused_or_foreach): on the CPU it runs the for-loop.
        pinned["optim"] = "adamw_torch_forloop"
        report.notes.append("--optim adamw_torch on the CPU: torch runs its for-loop AdamW there (foreach is "
                            "for CUDA tensors), so the plan models that (adamw_torch_forloop)")
    context = spec.max_position_embeddings
    if pinned.get("cutoff_len") and context and pinned["cutoff_len"] > context:
        import math

        report.notes.append(
            f"--cutoff {pinned['cutoff_len']} is beyond {spec.name}'s context of {context:,} tokens: positions "
            f"past it were never trained; enable RoPE scaling (e.g. rope_scaling: yarn, factor "
            f"{math.ceil(pinned['cutoff_len'] / context)}) or use --cutoff {context} or less")
    if request.sweep:
        from planner.search.sweep import sweep

        report.sections["sweep"] = sweep(spec, stats, pinned=pinned, **request.search.kwargs())
        return report
    if request.fixed:
        _fixed_stage(spec, setup, stats, pinned, report, margin=_margin(request, choice),
                     estimator=choice.estimator())
    else:
        _search_stage(spec, setup, stats, pinned, request, report, choice)
    return report


def _calibration_stage(setup: GpuSetup, request: PlanRequest, report: Report):
    """Which calibration the plan uses (said in the notes and the JSON), its margin, and any file ignored."""
    from planner.hardware.calibration_use import choose_calibration

    choice = choose_calibration(setup.gpu, explicit=request.calibration)
    report.warnings.extend(choice.warnings)
    if not setup.gpu.is_cpu:
        report.notes.append(choice.note)
        margin = ("--margin given" if request.search.margin is not None else choice.margin_why)
        report.notes.append(f"safety margin: {_margin(request, choice):.1%} ({margin})")
    report.sections["calibration"] = choice.to_json()
    return choice


def _margin(request: PlanRequest, choice=None) -> float:
    from planner.search.objective import DEFAULT_MARGIN

    if request.search.margin is not None:
        return request.search.margin
    return choice.margin if choice is not None else DEFAULT_MARGIN


def _fixed_stage(spec: ModelSpec, setup: GpuSetup, stats, pinned: dict[str, Any], report: Report, *,
                 margin: float, estimator) -> None:
    """--fixed: evaluate exactly the configuration given (defaults for the rest), no search. It fits (exit 0)
    only within the same safety margin the search uses."""
    from dataclasses import replace

    from planner.memory import render_memory

    train = TrainConfig(**pinned)
    if stats is not None and "cutoff_len" not in pinned:
        train = train.with_(cutoff_len=stats.cutoff_len)
    if setup.gpu.is_cpu and train.deepspeed_stage:
        train = train.with_(deepspeed_stage=0)
    breakdown = replace(estimator(spec, train, setup), margin=margin)
    report.train = train
    report.sections["config"] = Section({"method": train.method, **train.to_json()},
                                        lambda console: _render_config(train, console))
    report.sections["memory"] = Section(breakdown.to_json(), lambda console: render_memory(breakdown, console))
    report.breakdown = breakdown
    report.params_trainable = _trainable(spec, train)
    if not breakdown.fits:
        report.exit_code = 1
        if breakdown.fits_budget and breakdown.host_fits:
            report.warnings.append(
                f"the peak fits the card but not the {margin:.0%} safety margin (limit "
                f"{gib(breakdown.limit_bytes)}): the search would never choose this config. Lower "
                "--margin only if a measurement on this card backs it (plan calibrate)")
        else:
            report.notes.append("this configuration does not fit; drop --fixed to let the planner search")


def _search_stage(spec, setup, stats, pinned, request: PlanRequest, report: Report, choice) -> None:
    from planner.errors import Infeasible
    from planner.search import search

    kwargs = {**request.search.kwargs(), "margin": _margin(request, choice), "estimator": choice.estimator()}
    try:
        plan = search(spec, setup, stats, pinned=pinned, **kwargs)
    except Infeasible as exc:
        message = exc.message
        report.exit_code = 1
        report.sections["infeasible"] = Section(
            {"message": message, **exc.payload},
            lambda console: console.print(message, style="red"))
        return
    if not plan.memory.fits:  # the contract: never "Recommended" for a config that does not fit
        report.exit_code = 1
        message = ("internal check: the search returned a config that does not fit ("
                   + "; ".join(plan.memory.shortfalls()) + "); nothing is recommended")
        report.sections["infeasible"] = Section({"message": message, "closest": plan.to_json()["config"]},
                                                lambda console: console.print(message, style="red"))
        return
    report.plan, report.train = plan, plan.config
    report.sections["plan"] = plan
    report.params_trainable = _trainable(spec, plan.config)


def _trainable(spec: ModelSpec, train: TrainConfig) -> int:
    from planner.memory.trainable import trainable_state

    return trainable_state(spec, train).params


def _render_config(train: TrainConfig, console) -> None:
    from rich.table import Table

    from planner.units import display_value

    t = Table(title=f"Configuration ({train.method}, fixed: no search)", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for key, value in train.to_json().items():
        t.add_row(key, display_value(value))
    console.print(t)
