"""Training recipes: what the trainer that runs the plan does on top of transformers + peft.

A plan is only true for the software that trains with it. LLaMA-Factory (the default: the exported
llamafactory.yaml is trained by it), TRL's SFTTrainer, Axolotl and peft's own QLoRA recipe differ in what
they upcast to fp32, the dtype of the adapters, how they checkpoint and how they cut and mask the data.
The facts live in profiles/trainers.yaml, each with the source line it comes from.

    >>> recipe("llamafactory").kbit_upcast_fp32
    False
    >>> recipe("peft").kbit_upcast_fp32
    True
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from planner.errors import UserError

DEFAULT_TRAINER = "llamafactory"


@dataclass(frozen=True)
class Fact:
    value: object
    source: str


@dataclass(frozen=True)
class Recipe:
    """One trainer's recipe. `facts` holds every fact of profiles/trainers.yaml with its source."""

    name: str
    tool: str
    checked: str  # the release whose source the facts were read from
    facts: tuple[tuple[str, Fact], ...]

    def fact(self, key: str) -> Fact | None:
        return dict(self.facts).get(key)

    def value(self, key: str, default: object = None) -> object:
        f = self.fact(key)
        return default if f is None else f.value

    @property
    def kbit_upcast_fp32(self) -> bool:
        """peft's prepare_model_for_kbit_training ran: the unquantized weights train in fp32."""
        return bool(self.value("kbit_upcast_fp32", False))

    @property
    def kbit_adapter_fp32(self) -> bool:
        """LoRA weights on a quantized base are fp32 (else the 16-bit compute dtype)."""
        return self.value("kbit_adapter_dtype", "fp32") == "fp32"

    @property
    def checkpoint_reentrant(self) -> bool:
        return bool(self.value("checkpoint_reentrant", False))

    def kbit_note(self) -> str:
        """One line for the plan: what this recipe does to a quantized model's other weights, and why."""
        f = self.fact("kbit_upcast_fp32")
        src = f.source if f else ""
        if self.kbit_upcast_fp32:
            return (f"{self.tool}: prepare_model_for_kbit_training upcasts embeddings, norms and lm_head to fp32, "
                    f"so activations outside the quantized matmuls are fp32 ({src})")
        adapters = "fp32" if self.kbit_adapter_fp32 else "16-bit"
        return (f"{self.tool}: no fp32 upcast of embeddings, norms or lm_head (they stay 16-bit); {adapters} "
                f"adapters ({src})")


@cache
def _doc() -> dict:
    return yaml.safe_load(resources.files("profiles").joinpath("trainers.yaml").read_text(encoding="utf-8"))


def known_trainers() -> tuple[str, ...]:
    return tuple(_doc())


@cache
def recipe(name: str = DEFAULT_TRAINER) -> Recipe:
    """The recipe named `name`; UserError (exit 2) listing the known ones otherwise."""
    doc = _doc()
    key = str(name).strip().lower().replace("-", "").replace("_", "")
    aliases = {"llamafactory": "llamafactory", "lf": "llamafactory", "trl": "trl", "sft": "trl", "axolotl": "axolotl",
               "peft": "peft", "hf": "peft", "transformers": "peft"}
    key = aliases.get(key, key)
    if key not in doc:
        close = difflib.get_close_matches(str(name), list(doc), n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"--trainer {name!r}: not a trainer vramplan has a recipe for.{hint}",
                        f"Known trainers: {', '.join(doc)}.")
    entry = doc[key]
    facts = tuple((k, Fact(v["value"], " ".join(str(v["source"]).split())))
                  for k, v in entry.items() if isinstance(v, dict) and "value" in v)
    return Recipe(name=key, tool=str(entry["tool"]), checked=str(entry["checked"]), facts=facts)
