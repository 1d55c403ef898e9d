"""`plan --sweep`: what each common card and GPU count would run, the generated version of the hand tables
in fine-tuning guides ("7B LoRA: 24 GB; 70B QLoRA: 48 GB ...").

    >>> table = sweep(spec, data, cards=("RTX-4090", "H100-SXM-80G"), counts=(1, 8))
    >>> [(r.card, r.count, r.method) for r in table.rows]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from planner.errors import Infeasible, UserError
from planner.hardware.gpu_spec import GpuSetup
from planner.model.spec import ModelSpec
from planner.units import gib

# 24 GB consumer cards, 48 GB workstation, 40/80 GB A100, 80 GB H100, 141 GB H200.
DEFAULT_CARDS = ("RTX-3090", "RTX-4090", "L40S-48G", "A100-SXM-40G", "A100-SXM-80G", "H100-SXM-80G", "H200-141G")
DEFAULT_COUNTS = (1, 2, 4, 8)


@dataclass(frozen=True)
class SweepRow:
    card: str
    memory_bytes: int
    count: int
    fits: bool
    method: str | None = None
    label: str | None = None
    cutoff_len: int | None = None
    micro_batch: int | None = None
    grad_accum: int | None = None
    deepspeed_stage: int | None = None
    offload: str | None = None
    gradient_checkpointing: bool | None = None
    peak_bytes: int | None = None
    tokens_per_s: float | None = None
    total_seconds: float | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class SweepTable:
    model: str
    rows: list[SweepRow] = field(default_factory=list)
    cutoff_target: int | None = None
    epochs: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "cutoff_target": self.cutoff_target, "epochs": self.epochs,
                "rows": [r.to_json() for r in self.rows]}

    def render(self, console) -> None:
        from rich.table import Table

        from planner.search.plan import duration, epochs_text

        title = f"What {self.model} would run on each setup"
        if self.epochs:
            title += f" ({epochs_text(self.epochs)})"
        t = Table(title=title, title_justify="left")
        for col in ("card", "GPUs", "method", "cutoff", "batch", "ZeRO", "ckpt", "peak", "tokens/s", "time"):
            t.add_column(col, justify="right" if col in ("GPUs", "cutoff", "peak", "tokens/s", "time") else "left")
        last = None
        for r in self.rows:
            card = "" if r.card == last else f"{r.card} ({gib(r.memory_bytes, 0)})"
            last = r.card
            if not r.fits:
                t.add_row(card, str(r.count), "[red]does not fit[/]", "", "", "", "", "", "", r.note, style="dim")
                continue
            zero = "-" if not r.deepspeed_stage else f"{r.deepspeed_stage}" + (
                f"+{r.offload}" if r.offload != "none" else "")
            t.add_row(card, str(r.count), r.label.split(",")[0] if r.label else r.method, str(r.cutoff_len),
                      f"{r.micro_batch}x{r.grad_accum}", zero, "on" if r.gradient_checkpointing else "off",
                      f"{gib(r.peak_bytes, 1, unit=False)}", f"{r.tokens_per_s:,.0f}",
                      duration(r.total_seconds) if r.total_seconds else "-")
        console.print(t)


def sweep(model: ModelSpec, data, *, cards: tuple[str, ...] = DEFAULT_CARDS,
          counts: tuple[int, ...] = DEFAULT_COUNTS, pinned: dict[str, Any] | None = None,
          target_batch: int | None = None, margin: float | None = None, epochs: float | None = None,
          packing: bool = False, group_by_length: bool = False, estimator=None) -> SweepTable:
    """Search every (card, count) on one node; a row per setup, infeasible ones included."""
    from planner.hardware.catalog import find_gpu
    from planner.search import search

    rows: list[SweepRow] = []
    target = None
    n_epochs = None
    for name in cards:
        entry = find_gpu(name)
        if entry is None:
            raise UserError(f"--sweep: unknown card {name!r}.", "See `plan gpus` for the catalog.")
        for n in counts:
            setup = GpuSetup(replace(entry.spec), count=n)
            try:
                plan = search(model, setup, data, pinned=dict(pinned or {}), target_batch=target_batch, margin=margin,
                              epochs=epochs, packing=packing, group_by_length=group_by_length, estimator=estimator,
                              _explain=False)
            except Infeasible as exc:
                closest = exc.payload.get("closest") or {}
                note = ""
                if closest.get("peak_bytes"):
                    note = f"needs {gib(closest['peak_bytes'], 0)}"
                    if not closest.get("host_ok", True):
                        note += f" + {gib(closest['host_bytes'], 0)} host RAM"
                rows.append(SweepRow(entry.spec.name, entry.spec.memory_bytes, n, False, note=note))
                continue
            c, tp = plan.config, plan.throughput
            target = plan.cutoff_target
            n_epochs = tp.epochs
            rows.append(SweepRow(
                entry.spec.name, entry.spec.memory_bytes, n, True, c.method, dict(
                    (k, v) for k, v, _ in plan.reasons).get("method", c.method), c.cutoff_len, c.per_device_train_batch_size, c.gradient_accumulation_steps,
                c.deepspeed_stage, c.offload, c.gradient_checkpointing, int(plan.memory.peak_bytes), tp.tokens_per_s,
                tp.total_seconds))
    return SweepTable(model.name, rows, target, n_epochs)
