"""The generic path: any causal LM transformers can build, planned from its own module tree.

Families without an analytic model (planner.model.spec.ARCHS) are built by the torch side from config.json
on the meta device (runner.generic, reached through the installed TorchSide: the planner never imports
runner/); what it reads off the module tree comes back here as plain data,
a `GenericFacts`: exact parameter counts by group, every Linear, which of them peft wraps and
bitsandbytes quantizes, the parameter tensors, and the layer kinds. Activations come from fake-tensor
traces of a shortened copy (runner.generic_trace), fitted as `Lin` values. Both are cached on disk per
(config hash, software stack), so the search's many evaluations and a second `plan` read JSON and never
import torch.

    >>> spec = generic_spec({"model_type": "olmo2", ...}, name="OLMo-2-1B", where="config.json")
    >>> spec.generic.counts["embeddings"]
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from planner.errors import UserError
from planner.model.facts import GenericFacts

# Version of the cached JSON layout: bump when runner.generic writes something new.
FACTS_VERSION = 7
_EXTRA = "pip install 'vramplan[train]'"


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the config's canonical JSON (file-description keys left out)."""
    skip = {"_name_or_path", "transformers_version", "architectures"}
    text = json.dumps({k: v for k, v in config.items() if k not in skip}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def stack_key() -> str | None:
    """torch / transformers / peft versions as installed (read without importing them), or None."""
    try:
        return "-".join(f"{p}{metadata.version(p)}" for p in ("torch", "transformers", "peft"))
    except metadata.PackageNotFoundError:
        return None


def cache_dir() -> Path:
    env = os.environ.get("VRAMPLAN_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vramplan"


def _cache_path(kind: str, chash: str, stack: str, key: str = "") -> Path:
    name = f"{chash}-{hashlib.sha256((stack + key).encode()).hexdigest()[:16]}.json"
    return cache_dir() / "generic" / f"v{FACTS_VERSION}" / kind / name


def _read_cache(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_cache(path: Path, value: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value), encoding="utf-8")
        tmp.replace(path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError:
        pass  # a read-only cache only costs speed


class TorchSide(Protocol):
    """What the torch side (runner/) computes for the generic path, handed to the planner as plain data.

    The planner core never imports runner/: `import runner` installs runner.side.RunnerSide here (the command
    line does so at start; importing runner costs no torch). Each method may raise ImportError when torch,
    transformers or peft is missing; the planner turns that into one install message.
    """

    def check(self) -> None: ...

    def inspect_config(self, config: dict[str, Any], *, where: str, trust_remote_code: bool,
                       source_dir: str | None) -> dict[str, Any]: ...

    def fit_activations(self, config: dict[str, Any], facts: GenericFacts, key: dict[str, Any]) -> dict[str, Any]: ...

    def vision_facts(self, config: dict[str, Any], *, where: str) -> dict[str, Any]: ...


_TORCH_SIDE: TorchSide | None = None


def use_torch_side(side: TorchSide | None) -> None:
    """Install (or, with None, remove) the torch side the generic path asks."""
    global _TORCH_SIDE
    _TORCH_SIDE = side


def torch_side() -> TorchSide | None:
    return _TORCH_SIDE


def _install_message(what: str, model_type: str, where: str, missing: str | None) -> UserError:
    return UserError(
        f"{where}: model_type {model_type!r} has no analytic model in the planner, and {what} needs "
        f"{missing or 'torch'}, which is not installed.",
        f"The generic path builds the model from config.json with transformers on the meta device "
        f"(no weights, no download) to read its exact layout. Install it with: {_EXTRA}",
    )


def _runner(what: str, model_type: str, where: str) -> TorchSide:
    """The installed torch side, checked importable; else one message saying which extra to install and why."""
    side = _TORCH_SIDE
    if side is None:
        raise _install_message(what, model_type, where, "vramplan's runner package")
    try:
        side.check()
    except ImportError as exc:
        raise _install_message(what, model_type, where, exc.name) from None
    return side


def _need_stack(model_type: str, where: str) -> str:
    stack = stack_key()
    if stack is None:
        _runner("reading its layout", model_type, where)  # raises the install message
        raise UserError(f"{where}: torch, transformers and peft must all be installed ({_EXTRA}).")
    return stack


def load_facts(config: dict[str, Any], *, where: str, trust_remote_code: bool = False,
               source_dir: Path | None = None) -> tuple[GenericFacts, dict[str, Any]]:
    """(facts, vision info) of a language-model config, from the disk cache or the runner."""
    model_type = str(config.get("model_type"))
    stack = _need_stack(model_type, where)
    chash = config_hash(config)
    path = _cache_path("facts", chash, stack, f"trc={trust_remote_code}")
    value = _read_cache(path)
    if value is None:
        gen = _runner("reading its layout", model_type, where)
        value = gen.inspect_config(config, where=where, trust_remote_code=trust_remote_code,
                                   source_dir=str(source_dir) if source_dir else None)
        value["config_hash"] = chash
        _write_cache(path, value)
    return GenericFacts.from_json(value), value.get("vision") or {}


def activation_fit(spec, key: dict[str, Any]) -> dict[str, Any]:
    """The fitted activation terms of one training configuration (runner.generic_trace), cached."""
    facts: GenericFacts = spec.generic
    where = spec.name
    stack = _need_stack(facts.model_type, where)
    key_text = json.dumps(key, sort_keys=True)
    path = _cache_path("activations", facts.config_hash, stack, key_text)
    value = _read_cache(path)
    if value is None:
        side = _runner("tracing its activations", facts.model_type, where)
        value = side.fit_activations(spec.config, facts, key)
        _write_cache(path, value)
    return value


@lru_cache(maxsize=256)
def _fit_cached(spec, key_text: str) -> dict[str, Any]:
    return activation_fit(spec, json.loads(key_text))


def fitted(spec, key: dict[str, Any]) -> dict[str, Any]:
    """activation_fit, memoized in the process (the search evaluates the same key many times)."""
    return _fit_cached(spec, json.dumps(key, sort_keys=True))


def generic_spec(config: dict[str, Any], *, name: str, hub_id: str | None = None, source: str = "folder",
                 source_dir: Path | None = None, where: str = "config.json", trust_remote_code: bool = False,
                 published_params: int | None = None):
    """A ModelSpec for a family without an analytic model, from its module tree (see module doc)."""
    from planner.model.config_compat import language_config
    from planner.model.spec import ModelSpec

    lm, wrapper = language_config(config)
    facts, vision = load_facts(config, where=where, trust_remote_code=trust_remote_code, source_dir=source_dir)
    d = facts.dim
    notes = [f"{facts.model_type}: planned from its transformers module tree (built on the meta device); "
             f"activations from fake-tensor traces of a shortened copy ({len(facts.kind_names)} layer "
             f"kind(s): {'; '.join(facts.kind_names)})"]
    if vision.get("note"):
        notes.append(vision["note"])
    hidden = int(d.get("hidden_size") or 0)
    heads = int(d.get("num_attention_heads") or 1)
    experts = int(d.get("num_experts") or 0)
    window = d.get("sliding_window")
    return ModelSpec(
        name=name, model_type=facts.model_type, hidden_size=hidden,
        intermediate_size=int(d.get("intermediate_size") or 4 * hidden),
        num_layers=len(facts.layer_kinds), num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or hidden // heads), vocab_size=int(d.get("vocab_size") or 0),
        tie_word_embeddings=facts.count.get("lm_head", 0) == 0, qkv_bias=False, o_bias=False, mlp_bias=False,
        max_position_embeddings=int(d.get("max_position_embeddings") or 4096), hub_id=hub_id,
        num_experts=experts if facts.moe_layers else 0,
        num_experts_per_tok=int(d.get("num_experts_per_tok") or 0) if facts.moe_layers else 0,
        moe_intermediate_size=int(d.get("moe_intermediate_size") or 0),
        shared_expert_intermediate_size=int(d.get("shared_expert_intermediate_size") or 0),
        moe_layers=facts.moe_layers,
        torch_dtype=str(lm.get("torch_dtype") or lm.get("dtype") or "bfloat16"),
        sliding_window=int(window) if isinstance(window, int) else None,
        source=source, source_dir=source_dir, published_params=published_params,
        multimodal=wrapper, vision_params=int(vision.get("params") or 0), generic=facts, notes=tuple(notes),
        config=dict(lm),
    )
