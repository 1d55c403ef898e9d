"""The memory-model flags of `plan`, and the TrainConfig they pin.

Every flag defaults to None, meaning "not pinned": the search chooses it.

    @click.command()
    @memory_options
    def plan(**opts): config = train_config_from_options(opts, TrainConfig())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from planner.errors import UserError
from planner.request import TRAIN_FLAGS, TrainFlag
from planner.train_config import TrainConfig

# Flags whose value is not the field's value as typed: set by train_config_from_options itself.
_CONVERTED = ("trainer", "stack", "method", "quant", "lora_target")


def _click_option(flag: TrainFlag):
    kwargs: dict[str, Any] = {"help": flag.help, "metavar": flag.metavar}
    if flag.choices:
        kwargs["type"] = click.Choice(flag.choices)
        if flag.metavar is None:
            del kwargs["metavar"]
    elif flag.minimum is not None:
        kwargs["type"] = click.IntRange(flag.minimum, flag.maximum)
    elif flag.unit_interval:
        kwargs["type"] = click.FloatRange(0.0, 1.0, max_open=True)
    if flag.switch:
        kwargs.update(default=None, **({} if "/" in flag.decl else {"is_flag": True}))
        del kwargs["metavar"]
    return click.option(flag.decl, flag.param, **kwargs)


def memory_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the memory-model flags to a click command."""
    for flag in reversed(TRAIN_FLAGS):
        f = _click_option(flag)(f)
    return f


def _targets(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise UserError("--lora-target is empty.", "Give `all` or module names, e.g. --lora-target q_proj,v_proj.")
    if "all" in names and len(names) > 1:
        raise UserError(f"--lora-target {text}: `all` cannot be combined with module names.",
                        "Use --lora-target all, or list the modules.")
    return names


def train_config_from_options(opts: dict[str, Any], base: TrainConfig) -> TrainConfig:
    """`base` with every flag the user gave applied; UserError names the flag of a bad combination.

        >>> train_config_from_options({"method": "qlora", "cutoff": 4096}, TrainConfig()).quantization_bit
        4
    """
    changes: dict[str, Any] = {}
    if opts.get("trainer") is not None:
        from planner.trainers import recipe

        changes["trainer"] = recipe(str(opts["trainer"])).name
    if opts.get("stack") is not None:
        from planner.stack import format_stack, parse_stack

        changes["stack"] = format_stack(parse_stack(str(opts["stack"])))
    method, quant = opts.get("method"), opts.get("quant")
    if method is not None:
        changes["finetuning_type"] = "lora" if method == "qlora" else method
        if method == "qlora":
            if quant == "none":
                raise UserError("--method qlora --quant none: QLoRA means a quantized base.",
                                "Use --method lora for 16-bit LoRA, or --quant 4 / 8.")
            changes["quantization_bit"] = int(quant) if quant else 4
        elif quant is None:
            changes["quantization_bit"] = None
    if quant is not None and method != "qlora":
        changes["quantization_bit"] = None if quant == "none" else int(quant)
    for flag in TRAIN_FLAGS:
        if flag.param not in _CONVERTED and opts.get(flag.param) is not None:
            (name,) = flag.fields
            changes[name] = opts[flag.param]
    if opts.get("lora_target") is not None:
        changes["lora_target"] = _targets(str(opts["lora_target"]))
    config = base.with_(**changes)
    _validate(config, opts)
    return config


def _flag(opts: dict[str, Any], *names: str) -> str:
    """The flags (as typed) among `names` that the user gave, for error messages."""
    given = [n for n in names if opts.get(n) is not None]
    spell = {"batch_size": "batch-size", "grad_accum": "grad-accum", "lora_rank": "lora-rank",
             "lora_alpha": "lora-alpha", "lora_target": "lora-target", "lora_dropout": "lora-dropout",
             "grad_ckpt": "grad-ckpt"}
    parts = []
    for n in given:
        value = opts[n]
        text = f"--{spell.get(n, n)}"
        if not isinstance(value, bool):
            text += f" {value}"
        parts.append(text)
    return " ".join(parts)


def _validate(c: TrainConfig, opts: dict[str, Any]) -> None:
    if c.quantization_bit and c.finetuning_type != "lora":
        raise UserError(f"{_flag(opts, 'quant', 'method')}: bitsandbytes quantization trains LoRA adapters only.",
                        "Use --method qlora (or lora) with --quant, or --quant none for full/freeze tuning.")
    if c.finetuning_type != "lora":
        lora_flags = [n for n in ("lora_rank", "lora_alpha", "lora_target", "lora_dropout", "dora")
                      if opts.get(n) is not None]
        if lora_flags:
            raise UserError(f"{_flag(opts, *lora_flags)} with --method {c.finetuning_type}: "
                            "LoRA settings need --method lora or qlora.", "Drop the --lora-* flags or change --method.")
    if c.amp and c.dtype != "fp32":
        raise UserError(f"--amp {c.amp} with --dtype {c.dtype}: autocast mixed precision needs fp32 weights.",
                        f"Use --dtype fp32 --amp {c.amp}, or just --dtype {c.amp}.")
    if c.offload != "none" and c.deepspeed_stage == 0:
        raise UserError(f"--offload {c.offload} without --zero: offloading is a DeepSpeed ZeRO feature.",
                        "Add --zero 2 (optimizer) or --zero 3 (optimizer or params).")
    if c.offload == "params" and c.deepspeed_stage != 3:
        raise UserError(f"--offload params --zero {c.deepspeed_stage}: only ZeRO-3 partitions parameters.",
                        "Use --zero 3, or --offload optimizer.")
    if c.quantization_bit and c.deepspeed_stage == 3:
        raise UserError(f"--quant {c.quantization_bit} --zero 3: ZeRO-3 cannot partition bitsandbytes weights.",
                        "Use --zero 2 (or none) with QLoRA.")
    if c.optim in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit") and c.deepspeed_stage:
        raise UserError(f"--optim {c.optim} --zero {c.deepspeed_stage}: DeepSpeed runs its own optimizer on the "
                        "fp32 partitions; bitsandbytes optimizers are not supported there.",
                        "Use --optim adamw_torch with --zero, or drop --zero.")


def pinned_from_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields the flags pin (validated): {field: value} of every flag given, in table order."""
    given = [flag for flag in TRAIN_FLAGS if opts.get(flag.param) is not None]
    if not given:
        return {}
    config = train_config_from_options(opts, TrainConfig())
    pinned = {name: getattr(config, name) for flag in given for name in flag.fields}
    if opts.get("method") in ("lora", "full", "freeze") and opts.get("quant") is None:
        pinned["quantization_bit"] = None  # --method lora means 16-bit LoRA, not "QLoRA if it must"
    return pinned
