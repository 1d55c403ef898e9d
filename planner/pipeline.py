"""One `plan` run: resolve the inputs, compute, and collect what the renderers show.

resolve (model, GPUs, data) -> pinned settings -> search (or the fixed config) -> exports / apply.
The Report keeps the typed values (for the table) and builds the JSON object (for --format json) from
them, so the two outputs cannot disagree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from planner.hardware.gpu_spec import GpuSetup
from planner.hardware.gpus import resolve_setup
from planner.model.params import ParamCounts, active_params, count_params
from planner.model.resolve import resolve_model_noted
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig

# --flag (click parameter name) -> the TrainConfig fields it pins.
FLAG_FIELDS: dict[str, tuple[str, ...]] = {
    "method": ("finetuning_type", "quantization_bit"),
    "dtype": ("dtype",),
    "amp": ("amp",),
    "trainer": ("trainer",),
    "stack": ("stack",),
    "quant": ("quantization_bit",),
    "cutoff": ("cutoff_len",),
    "batch_size": ("per_device_train_batch_size",),
    "grad_accum": ("gradient_accumulation_steps",),
    "lora_rank": ("lora_rank",),
    "lora_alpha": ("lora_alpha",),
    "lora_target": ("lora_target",),
    "lora_dropout": ("lora_dropout",),
    "dora": ("use_dora",),
    "attn": ("attn_implementation",),
    "optim": ("optim",),
    "grad_ckpt": ("gradient_checkpointing",),
    "liger": ("use_liger_kernel",),
    "zero": ("deepspeed_stage",),
    "offload": ("offload",),
}


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


def pinned_from_options(options: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields the user set on the command line (validated by the memory options)."""
    from planner.cli.memory_options import train_config_from_options

    given = [flag for flag in FLAG_FIELDS if options.get(flag) is not None]
    if not given:
        return {}
    config = train_config_from_options(options, TrainConfig())
    names = {f.name for f in fields(TrainConfig)}
    pinned: dict[str, Any] = {}
    for flag in given:
        for name in FLAG_FIELDS[flag]:
            if name in names:
                pinned[name] = getattr(config, name)
    if options.get("method") in ("lora", "full", "freeze") and options.get("quant") is None:
        pinned["quantization_bit"] = None  # --method lora means 16-bit LoRA, not "QLoRA if it must"
    return pinned


def _data_stage(spec: ModelSpec, options: dict[str, Any], report: Report):
    from planner.cli.data_options import data_request_from_options

    request = data_request_from_options(options, spec)
    if request is None:
        return None
    from planner.data import analyze, render_data

    stats = analyze(request, spec, progress=options.get("fmt") == "table")
    report.sections["data"] = Section(stats.to_json(), lambda console: render_data(stats, console))
    return stats


def run_plan(*, model: str, gpu: str | None, gpus: int | None, nodes: int,
             options: dict[str, Any]) -> Report:
    spec, model_note = resolve_model_noted(model, trust_remote_code=bool(options.get("trust_remote_code")))
    setup = resolve_setup(gpu, gpus=gpus, nodes=nodes, host_mem=options.get("host_mem"))
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
    choice = _calibration_stage(setup, options, report)
    stats = _data_stage(spec, options, report)
    pinned = pinned_from_options(options)
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
    if options.get("synthetic_data") and "cutoff_len" not in pinned:
        from planner.exports.plan_file import parse_synthetic

        # --synthetic-data N:LEN trains rows of LEN tokens: plan for exactly that length.
        pinned["cutoff_len"] = parse_synthetic(options["synthetic_data"])[1]
    if options.get("sweep"):
        from planner.cli.search_options import search_kwargs
        from planner.search.sweep import sweep

        report.sections["sweep"] = sweep(spec, stats, pinned=pinned, **search_kwargs(options))
        return report
    if options.get("fixed"):
        _fixed_stage(spec, setup, stats, pinned, report, margin=_margin(options, choice),
                     estimator=choice.estimator())
    else:
        _search_stage(spec, setup, stats, pinned, options, report, choice)
    if options.get("simulate"):
        _simulate_stage(spec, report)
    return report


def _calibration_stage(setup: GpuSetup, options: dict[str, Any], report: Report):
    """Which calibration the plan uses (said in the notes and the JSON), its margin, and any file ignored."""
    from planner.hardware.calibration_use import choose_calibration

    choice = choose_calibration(setup.gpu, explicit=options.get("calibration"))
    report.warnings.extend(choice.warnings)
    if not setup.gpu.is_cpu:
        report.notes.append(choice.note)
        margin = ("--margin given" if options.get("margin") is not None else choice.margin_why)
        report.notes.append(f"safety margin: {_margin(options, choice):.1%} ({margin})")
    report.sections["calibration"] = choice.to_json()
    return choice


def _margin(options: dict[str, Any], choice=None) -> float:
    from planner.search.objective import DEFAULT_MARGIN

    if options.get("margin") is not None:
        return float(options["margin"])
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
                f"{breakdown.limit_bytes / (1 << 30):.2f} GiB): the search would never choose this config. Lower "
                "--margin only if a measurement on this card backs it (plan calibrate)")
        else:
            report.notes.append("this configuration does not fit; drop --fixed to let the planner search")


def _search_stage(spec, setup, stats, pinned, options, report: Report, choice) -> None:
    from planner.cli.search_options import search_kwargs
    from planner.errors import Infeasible
    from planner.search import search

    kwargs = {**search_kwargs(options), "margin": _margin(options, choice), "estimator": choice.estimator()}
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

    from planner.cli.render import display_value

    t = Table(title=f"Configuration ({train.method}, fixed: no search)", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    for key, value in train.to_json().items():
        t.add_row(key, display_value(value))
    console.print(t)


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


def _simulate_stage(spec: ModelSpec, report: Report) -> None:
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

    from planner.cli.render import gib

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
