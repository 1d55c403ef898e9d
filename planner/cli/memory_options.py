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
from planner.train_config import TrainConfig, conflicts

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


def _validate(c: TrainConfig, opts: dict[str, Any]) -> None:
    """The first rule of planner.train_config.conflicts that `c` breaks, as a UserError naming the flags."""
    given = {name for flag in TRAIN_FLAGS if opts.get(flag.param) is not None for name in flag.fields}
    for conflict in conflicts(c, given):
        raise UserError(conflict.message, conflict.hint)


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
