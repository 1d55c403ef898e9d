"""GenericFacts: what the meta-device build of a causal LM says about its layout (the generic path's data,
planner.model.generic; written by runner.generic.inspect_config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
