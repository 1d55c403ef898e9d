"""Plan: the search's answer, as one frozen value with JSON and a rich rendering."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from planner.hardware.gpu_spec import GpuSetup
from planner.model.spec import ModelSpec
from planner.search.hparams import HParams
from planner.search.objective import Candidate
from planner.search.throughput import Throughput
from planner.train_config import LLAMAFACTORY_NAMES, TrainConfig, to_llamafactory
from planner.units import gib


def epochs_text(n: float) -> str:
    """'1 epoch', '3 epochs', '1.5 epochs'."""
    return f"{n:g} epoch" + ("" if n == 1 else "s")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        return f"{int(hours)} h {int(minutes % 60):02d} min"
    return f"{hours / 24:.1f} days"


def config_json(config: TrainConfig, hp: HParams, *, packing: bool = False) -> dict[str, Any]:
    """The plan's settings in LLaMA-Factory's argument names (planner.train_config.LLAMAFACTORY_NAMES),
    but the ZeRO stage and offload as themselves (the export writes the JSON file LLaMA-Factory's
    `deepspeed:` key expects) and the optimizer by vramplan's name."""

    def lf(*names: str) -> dict[str, Any]:
        return {LLAMAFACTORY_NAMES[n]: to_llamafactory(config, n) for n in names}

    out = lf("finetuning_type")
    if config.quantization_bit:
        out.update(lf("quantization_bit"), quantization_method="bitsandbytes")
        if config.quantization_bit == 4:
            out.update(lf("double_quantization"))
    if config.is_lora:
        out.update(lf("lora_rank", "lora_alpha", "lora_dropout", "lora_target"))
        if config.use_dora:
            out.update(lf("use_dora"))
    if config.finetuning_type == "freeze":
        out.update(lf("freeze_trainable_layers"))
    out.update(lf("cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps"))
    out.update(learning_rate=hp.learning_rate, num_train_epochs=hp.num_train_epochs,
               lr_scheduler_type=hp.lr_scheduler_type, warmup_steps=hp.warmup_steps, bf16=hp.bf16, fp16=hp.fp16,
               optim=config.optim, deepspeed_stage=config.deepspeed_stage, offload=config.offload)
    out.update(lf("gradient_checkpointing", "use_liger_kernel"), val_size=hp.val_size)
    if packing:
        out["packing"] = True
    if config.attn_implementation:
        out.update(lf("attn_implementation"))
    return out


@dataclass(frozen=True)
class Plan:
    model: ModelSpec
    setup: GpuSetup
    config: TrainConfig
    memory: Any  # planner.memory.MemoryBreakdown
    throughput: Throughput
    hparams: HParams
    runners_up: list[Candidate]
    reasons: list[tuple[str, str, str]]  # (setting, value, why)
    margin: float
    limit_bytes: int
    target_batch: int
    target_source: str
    packing: bool = False
    group_by_length: bool = False
    cutoff_band: tuple[int, int] = (0, 0)
    cutoff_target: int = 0
    truncation: tuple[float, float] | None = None  # (samples share, tokens share) cut at the cutoff
    memory_calls: int = 0
    pinned: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def effective_batch(self) -> int:
        c = self.config
        return c.per_device_train_batch_size * c.gradient_accumulation_steps * self.setup.world_size

    def to_json(self) -> dict[str, Any]:
        tp = self.throughput
        config = {"method": self.config.method, "trainer": self.config.trainer,
                  **config_json(self.config, self.hparams, packing=self.packing),
                  "effective_batch_size": self.effective_batch}
        if self.group_by_length:
            config["group_by_length"] = True
        out: dict[str, Any] = {
            "config": config,
            "train_config": self.config.to_json(),
            "memory": self.memory.to_json() if hasattr(self.memory, "to_json") else {},
            "limit_bytes": self.limit_bytes,
            "margin": self.margin,
            "throughput": tp.to_json(),
            "hparams": self.hparams.to_json(),
            "reasons": [{"setting": k, "value": v, "why": why} for k, v, why in self.reasons],
            "runners_up": [c.to_json() for c in self.runners_up],
            "batch": {"effective": self.effective_batch, "target": self.target_batch, "source": self.target_source},
            "cutoff": {"value": self.config.cutoff_len, "target": self.cutoff_target,
                       "band_p95_p99": list(self.cutoff_band)},
            "search": {"memory_estimates": self.memory_calls, "pinned": list(self.pinned)},
        }
        if self.truncation is not None:
            out["cutoff"]["truncated_samples_share"] = round(self.truncation[0], 6)
            out["cutoff"]["truncated_tokens_share"] = round(self.truncation[1], 6)
        if self.notes:
            out["notes"] = list(self.notes)
        return out

    # -- rendering -------------------------------------------------------------------------------
    def render(self, console) -> None:
        from rich.table import Table

        from planner.units import display_value

        s = self.setup
        hw = f"{s.count} x {s.gpu.name}" + (f" x {s.nodes} nodes" if s.nodes > 1 else "")
        t = Table(title=f"Recommended: {self.model.name} on {hw}", title_justify="left")
        t.add_column("setting", style="bold")
        t.add_column("value")
        t.add_column("why")
        for key, value, why in self.reasons:
            t.add_row(key, value, why)
        if self.config.is_lora:
            hp = self.hparams
            t.add_row("lora_rank / alpha", f"{hp.lora_rank} / {hp.lora_alpha}",
                      f"{hp.why.get('lora_rank', '')}; alpha {hp.why.get('lora_alpha', '')}")
            t.add_row("lora_target", str(hp.lora_target), hp.why.get("lora_target", ""))
        for key in ("learning_rate", "num_train_epochs", "lr_scheduler_type", "warmup_steps", "val_size"):
            t.add_row(key, display_value(getattr(self.hparams, key)), self.hparams.why.get(key, ""))
        t.add_row("precision", "bf16" if self.hparams.bf16 else "fp16" if self.hparams.fp16 else "fp32",
                  self.hparams.why.get("precision", ""))
        console.print(t)
        self._render_memory(console)
        if self.runners_up:
            r = Table(title="Runners-up", title_justify="left")
            for col in ("config", "cutoff", "batch", "peak", "tokens/s", "why it lost"):
                r.add_column(col)
            for c in self.runners_up:
                r.add_row(c.label, str(c.config.cutoff_len),
                          f"{c.config.per_device_train_batch_size} x {c.config.gradient_accumulation_steps}",
                          f"{gib(c.memory.peak_bytes, 1)}",
                          f"{c.tokens_per_s:,.0f}" if c.throughput else "-", c.why)
            console.print(r)
        tp = self.throughput
        where = "real, the CPU" if self.setup.gpu.is_cpu else "real, all GPUs"
        line = (f"[bold]Speed:[/] {tp.tokens_per_s:,.0f} tokens/s ({where}), MFU {tp.mfu:.0%}, "
                f"padding efficiency {tp.padding_efficiency:.0%}")
        if tp.epoch_seconds is not None:
            line += (f"; one epoch {duration(tp.epoch_seconds)}, {epochs_text(tp.epochs)} "
                     f"{duration(tp.total_seconds)}")
        console.print(line)
        console.print("[dim]Times are model estimates (uncalibrated efficiency); memory is the planner's "
                      "prediction with the margin above.[/]")

    def _render_memory(self, console) -> None:
        from planner.memory import render_memory

        render_memory(self.memory, console)
