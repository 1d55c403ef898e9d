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
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from planner.errors import UserError

# Version of the cached JSON layout: bump when runner.generic writes something new.
FACTS_VERSION = 7
_EXTRA = "pip install 'vramplan[train]'"


@dataclass(frozen=True)
class GenericFacts:
    """What the meta-device build of a causal LM says (runner.generic.inspect_config). Hashable."""

    model_type: str
    counts: tuple[tuple[str, int], ...]  # ParamCounts fields -> numel
    # (name, in_features, out_features, bias, per_layer, layers, expert, module_linear): the decoder's
    # projections grouped over layers (name relative to the layer); 3-D expert parameters with
    # module_linear False
    linears: tuple[tuple, ...]
    quantized: tuple[str, ...]  # linears bitsandbytes replaces (transformers' own skip rules)
    lora_all: tuple[str, ...]  # linears peft wraps for target_modules="all-linear"
    lora_by_name: tuple[tuple[str, tuple[str, ...]], ...]  # target name -> linears peft wraps for it
    # (numel at rank 1, count) of the adapter tensors get_peft_model makes for "all-linear" (experts and
    # routers included where peft wraps them)
    lora_all_tensors: tuple[tuple[int, int], ...]
    tensors: tuple[tuple[int, int], ...]  # (numel, count) of every parameter tensor (tied ones once)
    layer_kinds: tuple[int, ...]  # per decoder layer: index into kind_tensors / kind_names
    kind_names: tuple[str, ...]
    kind_tensors: tuple[tuple[tuple[int, int], ...], ...]  # (numel, count) of one layer of each kind
    moe_layers: tuple[int, ...]
    buffer_bytes: int  # rotary tables and other buffers of the built model
    default_attn: str  # sdpa when the class supports it, else eager
    config_hash: str
    dims: tuple[tuple[str, Any], ...]  # the transformers config's values with its defaults applied
    lora_all_error: str | None = None  # why peft refuses "all-linear" on this model, when it does

    @property
    def dim(self) -> dict[str, Any]:
        return dict(self.dims)

    @property
    def count(self) -> dict[str, int]:
        return dict(self.counts)

    def wrapped(self, targets: tuple[str, ...]) -> set[str]:
        """Linear names peft wraps for `targets` ("all" = peft's all-linear); peft's own resolution,
        per target name, recorded by the runner."""
        if tuple(targets) == ("all",):
            return set(self.lora_all)
        by_name = dict(self.lora_by_name)
        return {n for t in targets for n in by_name.get(t, ())}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GenericFacts:
        return cls(
            model_type=d["model_type"], counts=tuple((k, int(v)) for k, v in d["counts"].items()),
            linears=tuple(tuple(x) for x in d["linears"]), quantized=tuple(d["quantized"]),
            lora_all=tuple(d["lora_all"]),
            lora_by_name=tuple((k, tuple(v)) for k, v in sorted(d["lora_by_name"].items())),
            lora_all_tensors=tuple((int(n), int(c)) for n, c in d["lora_all_tensors"]),
            tensors=tuple((int(n), int(c)) for n, c in d["tensors"]), layer_kinds=tuple(d["layer_kinds"]),
            kind_names=tuple(d["kind_names"]),
            kind_tensors=tuple(tuple((int(n), int(c)) for n, c in k) for k in d["kind_tensors"]),
            moe_layers=tuple(d["moe_layers"]), buffer_bytes=int(d["buffer_bytes"]),
            default_attn=d["default_attn"], config_hash=d["config_hash"],
            dims=tuple(sorted((k, v) for k, v in d["dims"].items() if not isinstance(v, (list, dict)))),
            lora_all_error=d.get("lora_all_error"),
        )


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


def activation_key(spec, train, device: str = "cuda") -> tuple[dict[str, Any], list[str]]:
    """The traced configuration standing in for `train` on a `device` kind (only what changes
    activations), and notes."""
    facts: GenericFacts = spec.generic
    notes = []
    if train.finetuning_type == "freeze":
        raise UserError(f"--method freeze: {spec.name} ({facts.model_type}) is planned from traces of a "
                        "shortened model, which do not model freezing by layer yet.",
                        "Use --method lora, qlora or full.")
    from planner.memory.weights import kbit_upcast

    dtype, amp = train.dtype, train.amp
    if train.quantization_bit and not kbit_upcast(train):
        notes.append(f"{train.quantization_bit}-bit: activations traced as 16-bit LoRA (this trainer keeps "
                     "the non-quantized weights 16-bit, and bitsandbytes returns its input's dtype)")
    elif train.quantization_bit:
        # peft's k-bit upcast leaves every activation outside the quantized matmuls in fp32, and
        # bitsandbytes returns its input's dtype (planner.memory.shape.activation_dtypes): LoRA on fp32
        # weights is the traceable stand-in (bitsandbytes has no fake-tensor kernels)
        dtype, amp = "fp32", None
        notes.append(f"{train.quantization_bit}-bit: activations traced as LoRA on fp32 weights (what peft's "
                     "k-bit upcast leaves outside the quantized matmuls)")
    if train.use_liger_kernel:
        notes.append("Liger kernels: not modeled for this family (traced without; an upper bound)")
    attn = train.attn_implementation or facts.default_attn
    if device == "cuda" and attn == "sdpa" and dtype == "fp32" and not amp and spec.num_kv_heads < spec.num_heads:
        # CUDA SDPA runs its math kernel for fp32 q/k/v with grouped-query heads and keeps the s x s
        # probabilities (planner.memory.shape.sdpa_falls_back_to_math, measured on an H200); the CPU
        # flash kernel the trace would run does not: eager attention keeps the same tensors (+ its mask)
        attn = "eager"
        notes.append("fp32 q/k/v with grouped-query heads: CUDA SDPA falls back to its math kernel (s x s "
                     "probabilities kept); traced as eager attention")
    key = {"method": "full" if train.finetuning_type == "full" else "lora", "dtype": dtype, "amp": amp,
           "gc": bool(train.gradient_checkpointing), "attn": attn}
    if key["method"] == "lora":
        key.update(lora_rank=train.lora_rank, lora_target=list(train.lora_target),
                   lora_dropout=0.1 if train.lora_dropout > 0 else 0.0, dora=bool(train.use_dora))
    return key, notes


def generic_activation_model(spec, train, grad_scale: float = 1.0, device: str = "cuda"):
    """planner.memory.step.ActivationModel from the fitted traces of `train` on `spec`."""
    from planner.memory.step import ActivationModel
    from planner.memory.terms import Lin

    key, _ = activation_key(spec, train, device)
    fit = fitted(spec, key)
    forward, saved = Lin(*fit["forward"]), Lin(*fit["saved"])
    grads = Lin(*fit["backward_grads"]) * grad_scale
    end = Lin(*fit["grads_end"]) * grad_scale
    backward = Lin(*fit["backward"]) + grads
    tail = Lin(*fit["tail"]) + Lin(*fit["tail_grads"]) * grad_scale
    windows = tuple(Lin(*w["act"]) + Lin(*w["grads"]) * grad_scale for w in fit.get("windows", ()))
    return ActivationModel(forward_layers=(), forward_head=(forward,), backward_head=(backward,),
                           backward_layers=(tail, end, *windows), saved_layers=saved, saved_end_forward=saved,
                           grads_end=end, backward_head_grads=grads)
