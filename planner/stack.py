"""The software stack a plan is for: the installed transformers / peft / bitsandbytes / trl / llamafactory
versions (read from package metadata, nothing imported), or `--stack transformers==4.57,trl==0.21` when
planning for another machine. The memory model and the plan read the differences that matter:

- transformers >= 5 fuses MoE experts into 3-D parameters that BitsAndBytesConfig does not quantize (only
  nn.Linear modules are replaced): "QLoRA" of Mixtral / Qwen-MoE keeps its experts in 16 bits. transformers 4
  keeps one nn.Linear per expert, which bitsandbytes quantizes.
- transformers <= 4.48 kept one more fp32 copy of the logits in the loss (removed in transformers PR #35646,
  January 2025; said in the plan, not modelled).
- TRL <= 0.22 called peft's prepare_model_for_kbit_training (trl/trainer/sft_trainer.py:610 in 0.21.0) and then
  cast embeddings and lm_head back to bf16 (peft_module_casting_to_bf16): said, not modelled.

    >>> stack_versions("transformers==4.57")["transformers"]
    '4.57'
"""

from __future__ import annotations

import re
from functools import cache

from planner.errors import UserError
from planner.units import gib

PACKAGES = ("transformers", "peft", "bitsandbytes", "trl", "llamafactory", "axolotl", "torch")
# What a plan assumes when a package is neither installed nor given: the releases the recipes were read from.
ASSUMED = {"transformers": "5.25", "peft": "0.21", "bitsandbytes": "0.50", "trl": "1.16", "llamafactory": "0.9.5",
           "axolotl": "0.19"}
_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([0-9][0-9A-Za-z.+\-]*)\s*$")


def parse_stack(text: str) -> tuple[tuple[str, str], ...]:
    """"transformers==4.57,trl==0.21" -> (("transformers", "4.57"), ("trl", "0.21")); UserError names the flag."""
    out: dict[str, str] = {}
    for part in (p for p in re.split(r"[,\s]+", text or "") if p):
        m = _SPEC.match(part)
        name = m.group(1).lower().replace("_", "-") if m else ""
        name = {"llama-factory": "llamafactory", "llamafactory": "llamafactory"}.get(name, name)
        if not m or name not in PACKAGES:
            raise UserError(f"--stack {text}: {part!r} is not PACKAGE==VERSION of a package the plan depends on.",
                            f"Use e.g. --stack transformers==4.57,trl==0.21; packages: {', '.join(PACKAGES)}.")
        out[name] = m.group(2)
    return tuple(sorted(out.items()))


def format_stack(pins: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{k}=={v}" for k, v in pins)


@cache
def installed() -> dict[str, str]:
    """Versions of the packages installed here (package metadata only: importing torch would cost seconds)."""
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@cache
def stack_versions(stack: str = "") -> dict[str, str]:
    """The versions a plan is for: --stack pins over the installed packages over ASSUMED."""
    return {**ASSUMED, **installed(), **dict(parse_stack(stack))}


def version_tuple(text: str) -> tuple[int, ...]:
    nums = []
    for part in text.split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        nums.append(int(m.group()))
    return tuple(nums)


def at_least(stack: str, package: str, version: str) -> bool:
    return version_tuple(stack_versions(stack).get(package, "0")) >= version_tuple(version)


def experts_quantized(stack: str) -> bool:
    """bitsandbytes quantizes routed MoE experts only while they are nn.Linear modules (transformers 4)."""
    return not at_least(stack, "transformers", "5")


def stack_notes(stack: str, *, is_moe: bool, quantized: bool, trainer: str, expert_bytes_16bit: int = 0) -> list[str]:
    """What this stack changes, said in the plan (the MoE case first: it decides whether QLoRA is QLoRA)."""
    v = stack_versions(stack)
    notes = []
    if is_moe and quantized and not experts_quantized(stack):
        notes.append(
            f"!! MoE + {'QLoRA' if quantized else 'k-bit'} on transformers {v['transformers']}: the routed experts "
            f"are fused 3-D parameters that BitsAndBytesConfig does not quantize (only nn.Linear is), so they stay "
            f"16-bit ({gib(expert_bytes_16bit, 1)} here) and only attention and shared layers are 4-bit. "
            f"What would work: plan for transformers 4.57 (--stack transformers==4.57: one nn.Linear per expert, "
            f"quantized), or 16-bit LoRA with ZeRO-3 across GPUs.")
    if not at_least(stack, "transformers", "4.49"):
        notes.append(f"transformers {v['transformers']} <= 4.48 keeps one more fp32 copy of the logits in the loss "
                     f"(removed in transformers PR #35646): the logits peak is higher than this plan models.")
    if trainer == "trl" and quantized and not at_least(stack, "trl", "0.23"):
        notes.append(f"trl {v['trl']} <= 0.22 calls prepare_model_for_kbit_training (sft_trainer.py:610 in 0.21.0) "
                     f"and casts embeddings/lm_head back to bf16 with norms left fp32: activations partly fp32, "
                     f"not modelled here (the trl recipe is trl >= 0.23's).")
    return notes
