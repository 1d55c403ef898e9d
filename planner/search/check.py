"""`plan --check train.yaml`: will an existing LLaMA-Factory or Axolotl config fit, and what to change.

The file's keys become a ModelSpec (model_name_or_path / base_model through planner.model.resolve) and a
TrainConfig; the memory model estimates it on the given (or detected) GPUs. When it does not fit, the
search runs with the file's method, rank and cutoff pinned and the differences are the changes to make.

    >>> result = check_config("train.yaml", setup)
    >>> result.fits, result.changes
    (False, [('per_device_train_batch_size', 8, 2), ...])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from planner.errors import Infeasible, UserError
from planner.hardware.gpu_spec import GpuSetup
from planner.memory.breakdown import gpu_limit_bytes, peak_fits
from planner.model.spec import ModelSpec
from planner.train_config import (
    AXOLOTL_NAMES,
    EIGHT_BIT_OPTIMIZERS,
    LLAMAFACTORY_NAMES,
    TrainConfig,
    from_llamafactory,
    to_llamafactory,
)
from planner.units import gib

# LLaMA-Factory's bundled DeepSpeed configs, when the file is not here to read (examples/deepspeed/).
_DS_NAMES = {"ds_z0_config.json": (0, "none"), "ds_z2_config.json": (2, "none"),
             "ds_z2_offload_config.json": (2, "optimizer"), "ds_z3_config.json": (3, "none"),
             "ds_z3_offload_config.json": (3, "params")}


@dataclass(frozen=True)
class CheckResult:
    path: str
    flavor: str  # llamafactory | axolotl
    model: ModelSpec
    config: TrainConfig
    setup: GpuSetup
    memory: Any
    limit_bytes: int
    margin: float
    fits: bool
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key in the file's names, old, new)
    suggestion: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.fits else 1

    def to_json(self) -> dict[str, Any]:
        return {"file": self.path, "flavor": self.flavor, "model": self.model.name, "fits": self.fits,
                "peak_bytes": int(self.memory.peak_bytes), "limit_bytes": self.limit_bytes, "margin": self.margin,
                "gpu": {"name": self.setup.gpu.name, "count": self.setup.count, "nodes": self.setup.nodes},
                "config": self.config.to_json(), "memory": self.memory.to_json(),
                "changes": [{"key": k, "from": a, "to": b} for k, a, b in self.changes],
                "suggestion": self.suggestion, "warnings": list(self.warnings)}

    def render(self, console) -> None:
        verdict = "[green]fits[/]" if self.fits else "[red]does not fit[/]"
        s = self.setup
        console.print(f"[bold]{self.path}[/] ({self.flavor}): {self.model.name}, {self.config.method}, cutoff "
                      f"{self.config.cutoff_len}, micro batch {self.config.per_device_train_batch_size} on "
                      f"{s.count} x {s.gpu.name}: {verdict} (peak {gib(self.memory.peak_bytes, 1)}, limit "
                      f"{gib(self.limit_bytes, 1)} = {gib(self.memory.budget_bytes, 1)} - {self.margin:.0%})")
        for line in (self.memory.shortfalls() if hasattr(self.memory, "shortfalls") else []):
            console.print(f"[red]Does not fit[/] ({line}).")
        for w in self.warnings:
            console.print(f"[yellow]warning:[/] {w}")
        if self.changes:
            console.print("Change:" if not self.fits else "Faster, and still fits:")
            for k, a, b in self.changes:
                console.print(f"  {k}: {a!r} -> {b!r}")
        if self.suggestion:
            console.print(self.suggestion)


def _load(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The mapping and each top-level key's line (1-based)."""
    if not path.is_file():
        raise UserError(f"--check {path}: no such file.")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)}).",
                        "Fix the file (indentation, quotes) and run --check again.") from None
    if not isinstance(doc, dict) or not isinstance(node, yaml.MappingNode):
        raise UserError(f"{path}: expected a mapping of training arguments (a LLaMA-Factory or Axolotl YAML).")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return doc, lines


class _Reader:
    def __init__(self, path: Path, doc: dict[str, Any], lines: dict[str, int]):
        self.path, self.doc, self.lines = path, doc, lines

    def where(self, key: str) -> str:
        return f"{self.path}:{self.lines.get(key, 1)}"

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        if key not in self.doc or self.doc[key] is None:
            return default
        value = self.doc[key]
        if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
            try:
                return float(value)
            except ValueError:
                pass
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise UserError(f"{self.where(key)}: {key}: {value!r} is not a valid {name}.")
        return value

    def choice(self, key: str, options: tuple, default: Any = None) -> Any:
        value = self.doc.get(key, default)
        if value not in options:
            raise UserError(f"{self.where(key)}: {key}: {value!r} is not one of {', '.join(map(str, options))}.")
        return value


def _deepspeed(ref: Any, base: Path, where: str) -> tuple[int, str]:
    if not ref:
        return 0, "none"
    path = Path(str(ref)).expanduser()
    path = path if path.is_absolute() else base / path
    if path.is_file():
        try:
            zero = json.loads(path.read_text(encoding="utf-8")).get("zero_optimization", {})
        except (ValueError, AttributeError) as exc:
            raise UserError(f"{where}: deepspeed {ref}: not a DeepSpeed JSON config ({exc}).") from None
        stage = int(zero.get("stage", 0))
        offload = "params" if zero.get("offload_param") and (zero.get("offload_param") or {}).get("device") not in (
            None, "none") else "optimizer" if zero.get("offload_optimizer") and (
            zero.get("offload_optimizer") or {}).get("device") not in (None, "none") else "none"
        return stage, offload
    if path.name in _DS_NAMES:
        return _DS_NAMES[path.name]
    raise UserError(f"{where}: deepspeed {ref}: file not found (relative to {base}).")


def _precision(bf16: bool, fp16: bool, pure: bool, full: bool) -> tuple[str, str | None]:
    half = "bf16" if bf16 else "fp16" if fp16 else None
    if half is None:
        return "fp32", None
    if full and not pure:
        return "fp32", half  # fp32 master weights under autocast (LLaMA-Factory's default for full/freeze)
    return half, None


def parse_llamafactory(r: _Reader) -> tuple[str, TrainConfig, dict[str, Any]]:
    model = r.get("model_name_or_path", str)
    if not model:
        raise UserError(f"{r.path}: model_name_or_path is missing.")
    n = LLAMAFACTORY_NAMES
    ft = r.choice(n["finetuning_type"], ("lora", "full", "freeze"), "lora")
    bits = r.get(n["quantization_bit"], int)
    if bits not in (None, 4, 8):
        raise UserError(f"{r.where(n['quantization_bit'])}: quantization_bit {bits}: the planner knows 4 and 8 "
                        "(bitsandbytes).")
    dtype, amp = _precision(bool(r.get("bf16", bool, False)), bool(r.get("fp16", bool, False)),
                            bool(r.get("pure_bf16", bool, False)), ft != "lora")
    ds = n["deepspeed_stage"]
    stage, offload = _deepspeed(r.doc.get(ds), r.path.parent, r.where(ds))
    rank = r.get(n["lora_rank"], int, 8)
    train = TrainConfig(
        finetuning_type=ft, quantization_bit=bits,
        double_quantization=r.get(n["double_quantization"], bool, True), dtype=dtype, amp=amp,
        cutoff_len=r.get(n["cutoff_len"], int, 2048),
        per_device_train_batch_size=r.get(n["per_device_train_batch_size"], int, 1),
        gradient_accumulation_steps=r.get(n["gradient_accumulation_steps"], int, 1),
        lora_rank=rank, lora_alpha=r.get(n["lora_alpha"], int, None) or 2 * rank,
        lora_dropout=float(r.get(n["lora_dropout"], (int, float), 0.0)),
        lora_target=from_llamafactory("lora_target", r.get(n["lora_target"], str, "all")),
        use_dora=r.get(n["use_dora"], bool, False),
        freeze_trainable_layers=r.get(n["freeze_trainable_layers"], int, 2),
        attn_implementation=from_llamafactory("attn_implementation", r.doc.get(n["attn_implementation"], "auto")),
        optim=r.get(n["optim"], str, "adamw_torch"),
        gradient_checkpointing=from_llamafactory("gradient_checkpointing",
                                                 r.get(n["gradient_checkpointing"], bool, False)),
        use_liger_kernel=r.get(n["use_liger_kernel"], bool, False), deepspeed_stage=stage, offload=offload,
        trainer="llamafactory",
    )
    return model, train, {"packing": bool(r.get("packing", bool, False))}


def parse_axolotl(r: _Reader) -> tuple[str, TrainConfig, dict[str, Any]]:
    model = r.get("base_model", str)
    if not model:
        raise UserError(f"{r.path}: base_model is missing.")
    adapter = r.choice("adapter", ("lora", "qlora", None), None)
    bits = 4 if r.get("load_in_4bit", bool, False) else 8 if r.get("load_in_8bit", bool, False) else None
    if adapter == "qlora" and bits is None:
        bits = 4
    ft = "lora" if adapter else "full"
    bf16 = r.doc.get("bf16") in (True, "auto")
    dtype, amp = _precision(bf16, bool(r.get("fp16", bool, False)), False, ft != "lora")
    stage, offload = _deepspeed(r.doc.get("deepspeed"), r.path.parent, r.where("deepspeed"))
    targets = ("all",) if r.get("lora_target_linear", bool, False) else tuple(r.get("lora_target_modules", list, ["all"]))
    plugins = r.get("plugins", list, [])
    train = TrainConfig(
        finetuning_type=ft, quantization_bit=bits, dtype=dtype, amp=amp, cutoff_len=r.get("sequence_len", int, 2048),
        per_device_train_batch_size=r.get("micro_batch_size", int, 1),
        gradient_accumulation_steps=r.get("gradient_accumulation_steps", int, 1),
        lora_rank=r.get("lora_r", int, 8), lora_alpha=r.get("lora_alpha", int, 16),
        lora_dropout=float(r.get("lora_dropout", (int, float), 0.0)), lora_target=targets,
        use_dora=r.get("peft_use_dora", bool, False),
        attn_implementation="flash_attention_2" if r.get("flash_attention", bool, False) else None,
        optim=r.get("optimizer", str, "adamw_torch"),
        gradient_checkpointing=bool(r.doc.get("gradient_checkpointing", False)),
        use_liger_kernel=any("liger" in str(p).lower() for p in plugins)
        and bool(r.doc.get("liger_fused_linear_cross_entropy", False)),
        deepspeed_stage=stage, offload=offload, trainer="axolotl",
    )
    return model, train, {"packing": bool(r.get("sample_packing", bool, False))}


_COMPARED = ("quantization_bit", "cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps",
             "gradient_checkpointing", "use_liger_kernel", "deepspeed_stage", "offload", "optim")


def _changes(flavor: str, old: TrainConfig, new: TrainConfig) -> list[tuple[str, Any, Any]]:
    names = LLAMAFACTORY_NAMES if flavor == "llamafactory" else AXOLOTL_NAMES
    out = []
    for key in _COMPARED:
        a, b = getattr(old, key), getattr(new, key)
        if a == b:
            continue
        if key == "optim" and not {a, b} & set(EIGHT_BIT_OPTIMIZERS):
            continue  # fused vs foreach AdamW does not decide fit
        if key == "gradient_checkpointing" and flavor == "llamafactory":
            a, b = to_llamafactory(old, key), to_llamafactory(new, key)
        out.append((names.get(key, key), a, b))
    return out


def check_config(path: str | Path, setup: GpuSetup, *, margin: float | None = None, estimator=None) -> CheckResult:
    """Estimate an existing training YAML on `setup`; say whether it fits and what to change."""
    from planner.model.resolve import resolve_model
    from planner.search import search
    from planner.search.objective import DEFAULT_MARGIN, default_estimator

    path = Path(path).expanduser()
    doc, lines = _load(path)
    r = _Reader(path, doc, lines)
    if "model_name_or_path" in doc:
        flavor, (model_ref, train, extra) = "llamafactory", parse_llamafactory(r)
    elif "base_model" in doc:
        flavor, (model_ref, train, extra) = "axolotl", parse_axolotl(r)
    else:
        raise UserError(f"{path}: neither model_name_or_path (LLaMA-Factory) nor base_model (Axolotl) is set.")
    warnings = []
    if flavor == "llamafactory":
        from planner.exports.llamafactory import llamafactory_keys, transformers4_only_keys

        known, old = llamafactory_keys(), transformers4_only_keys()
        for k in doc:
            if k in old:
                warnings.append(f"{path}:{lines.get(k, 1)}: {k!r} exists only in transformers 4.x; with "
                                "transformers 5 LLaMA-Factory refuses it" + (" (use warmup_steps)" if k ==
                                                                             "warmup_ratio" else ""))
            elif k not in known:
                warnings.append(f"{path}:{lines.get(k, 1)}: {k!r} is not a LLaMA-Factory argument (its parser "
                                "would refuse the file)")
    try:
        spec = resolve_model(model_ref)
    except UserError as exc:
        key = "model_name_or_path" if flavor == "llamafactory" else "base_model"
        raise UserError(f"{path}:{lines.get(key, 1)}: {exc.message}", exc.hint) from None
    margin = DEFAULT_MARGIN if margin is None else margin
    estimate = estimator or default_estimator()
    mem = estimate(spec, train, setup)
    if hasattr(mem, "margin"):
        mem = replace(mem, margin=margin)
    limit = gpu_limit_bytes(mem.budget_bytes, margin)
    fits = peak_fits(mem, margin) and getattr(mem, "host_fits", True)
    pinned = {k: getattr(train, k) for k in ("finetuning_type", "quantization_bit", "lora_rank", "lora_alpha",
                                              "lora_target", "cutoff_len", "dtype", "amp")}
    changes, suggestion = [], ""
    try:
        batch = train.per_device_train_batch_size * train.gradient_accumulation_steps * setup.world_size
        plan = search(spec, setup, None, pinned=pinned, margin=margin, estimator=estimate, target_batch=batch,
                      packing=extra.get("packing", False))
        better = plan.throughput.tokens_per_s
        from planner.search.throughput import estimate_throughput

        own = estimate_throughput(spec, train, setup).tokens_per_s if fits else 0.0
        if not fits or better > 1.15 * own:
            changes = _changes(flavor, train, plan.config)
    except Infeasible as exc:
        suggestion = exc.message
    return CheckResult(str(path), flavor, spec, train, setup, mem, limit, margin, fits, changes, suggestion, warnings)
