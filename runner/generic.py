"""Read a causal LM's layout off its transformers module tree, built on the meta device.

The generic path of the planner (planner.model.generic): any decoder-only model transformers can build is
planned from what this returns, as plain JSON: parameter counts by group, every Linear grouped over the
decoder layers, the Linears peft wraps (peft's own target resolution) and bitsandbytes quantizes
(transformers' own skip rules), the parameter tensors and the distinct layer kinds. No weights are
allocated and nothing is downloaded: only config.json is read.

    >>> facts = inspect_config({"model_type": "olmo2", "hidden_size": 64, ...}, where="config.json")
    >>> facts["counts"]["embeddings"]
"""

from __future__ import annotations

import copy
import re
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

from planner.errors import UserError
from planner.model.config_compat import language_config
from runner.build import FILE_KEYS, torch_dtype

if TYPE_CHECKING:
    import torch

# Path components of attention-like blocks (softmax attention, linear attention, state-space mixers)
_ATTN_PARTS = {"self_attn", "attention", "attn", "linear_attn", "mixer", "self_attention", "mamba",
               "temporal_block", "feed_forward_attn"}
_NUM = re.compile(r"\.\d+(?=\.|$)")
_DIMS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
         "head_dim", "vocab_size", "max_position_embeddings", "tie_word_embeddings", "sliding_window",
         "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size")
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def causal_types() -> dict[str, str]:
    """Decoder-only causal LMs of transformers' causal-LM mapping: encoder models with an LM head
    (bert, roberta: in the masked-LM mapping) and encoder-decoders (bart, whisper: in the seq2seq
    mapping) are left out, they are not what a causal fine-tune trains."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES,
    )

    other = (set(MODEL_FOR_MASKED_LM_MAPPING_NAMES) | set(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
             | set(MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES))
    return {k: v for k, v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items() if k not in other}


def build_config(config: dict[str, Any], *, where: str, trust_remote_code: bool = False,
                 source_dir: str | None = None):
    """The transformers config of a config.json dict, or UserError with transformers' reason."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING_NAMES:
        if config.get("auto_map") or not trust_remote_code:
            if trust_remote_code and source_dir:
                try:
                    return AutoConfig.from_pretrained(source_dir, trust_remote_code=True)
                except Exception as exc:  # the folder's own code: report what it says
                    raise UserError(f"{where}: its remote code failed to load the config: {exc}") from None
            hint = ("--trust-remote-code exists and is off by default: it runs the model's own Python code "
                    "from its folder or hub repo, so give it only for code you trust"
                    + ("" if config.get("auto_map") else "; this config names no code (no auto_map)"))
            raise UserError(
                f"{where}: model_type {model_type!r} is not known to transformers "
                f"(installed: {_transformers_version()}); its code would come from the model repository.",
                hint + ". Otherwise use a transformers version that knows it.")
        raise UserError(f"{where}: model_type {model_type!r} is not known to transformers and the folder has "
                        "no code for it (no auto_map).", "Check the model_type, or update transformers.")
    kwargs = {k: v for k, v in config.items() if k not in FILE_KEYS}
    try:
        return AutoConfig.for_model(model_type, **kwargs)
    except Exception as exc:  # ValueError / TypeError / KeyError with transformers' own words
        raise UserError(f"{where}: transformers rejects this {model_type} config: {exc}",
                        "Fix the key it names (compare with the model's published config.json).") from None


def _known_types() -> set[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def check_causal_lm(model_type: str, *, where: str, wrapper: str | None = None) -> None:
    """UserError unless transformers builds `model_type` as a causal language model."""
    if model_type in causal_types():
        return
    inside = f" (the language model of {wrapper})" if wrapper else ""
    raise UserError(
        f"{where}: model_type {model_type!r}{inside} is not a decoder-only causal language model in transformers "
        "(encoder-only, vision, speech or diffusion models have no causal-LM head).",
        "The planner plans fine-tuning of decoder-only causal LMs (AutoModelForCausalLM), and the language "
        "model of image-text models.")


def build_meta(cfg, *, dtype: str = "bf16", attn: str | None = None, trust_remote_code: bool = False):
    """The causal LM of `cfg` on the meta device (no allocation), in train mode, use_cache off."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg.use_cache = False
    kwargs = {"attn_implementation": attn} if attn else {}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code,
                                                 **kwargs)
    model.train()
    return model


def decoder_layers(model, num_layers: int):
    """(dotted path, ModuleList) of the decoder layers: the ModuleList of num_layers blocks holding the most
    parameters, else (a config whose layer count means something else) the ModuleList holding the most."""
    import torch

    lists = [(sum(p.numel() for p in mod.parameters()), len(mod) == num_layers, name, mod)
             for name, mod in model.named_modules() if isinstance(mod, torch.nn.ModuleList) and len(mod)]
    exact = [x for x in lists if x[1]]
    pool = exact or lists
    if not pool:
        raise UserError(f"{type(model).__name__}: no list of decoder layers found in the module tree.")
    best = max(pool, key=lambda x: x[0])
    return best[2], best[3]


def per_layer_lists(cfg, n: int) -> dict[str, list]:
    """Config lists with one entry per layer (layer_types, no_rope_layers, ...); lists of layer indices
    (moe_layers = [0, 1, ...], kv_source_layers) that merely have n entries are not per-layer kinds."""
    out = {}
    for k, v in vars(cfg).items():
        if k.startswith("_") or not isinstance(v, (list, tuple)) or len(v) != n:
            continue
        # integers beyond 0/1 flags are layer indices (moe_layers, kv_source_layers), not kinds
        if n > 1 and all(isinstance(x, int) and not isinstance(x, bool) for x in v) and set(v) - {0, 1}:
            continue
        out[k] = list(v)
    return out


def _num_experts(cfg) -> int:
    for key in _EXPERT_KEYS:
        v = _attr(cfg, key)
        if isinstance(v, int) and v > 0:
            return v
    return 0


def _group(name: str, owner, param: torch.Tensor, experts: int, input_ids: set, output_ids: set) -> str:
    parts = name.split(".")
    owner_kind = type(owner).__name__.lower()
    leaf = parts[-2] if len(parts) > 1 else ""
    if id(param) in input_ids or "embedding" in owner_kind:
        return "embeddings"
    if id(param) in output_ids:
        return "lm_head"
    if "norm" in owner_kind or "norm" in leaf:
        return "norms"
    if "experts" in parts or (experts and param.dim() == 3 and param.shape[0] == experts):
        return "experts"
    if experts and (leaf in ("gate", "router") or "router" in owner_kind) and param.shape[0] == experts:
        return "router"
    if experts and leaf in ("gate", "router") and "e_score" in parts[-1]:
        return "router"
    if any(p in _ATTN_PARTS for p in parts):
        return "attention"
    return "mlp"


def _is_expert(name: str, p, experts: int) -> bool:
    """A routed-expert parameter: under `experts`, or 3-D with num_experts rows (transformers 5 fuses
    experts into [E, out, in]; Mamba's conv1d weights are 3-D too, and not experts)."""
    return ".experts." in f".{name}." or (experts > 0 and p.dim() == 3 and p.shape[0] == experts)


def _layer_signature(layer, extra: tuple) -> str:
    shapes = tuple((n, tuple(p.shape)) for n, p in layer.named_parameters())
    classes = tuple(sorted({type(m).__name__ for m in layer.modules()}))
    return repr((classes, shapes, extra))


def layer_kinds(cfg, layers) -> tuple[list[int], list[str]]:
    """Kind index per layer: same classes, parameter shapes and per-layer config entries (layer_types)."""
    n = len(layers)
    per_layer = per_layer_lists(cfg, n)
    experts = _num_experts(cfg)
    sigs, names, kinds = {}, [], []
    for i, layer in enumerate(layers):
        extra = tuple((k, str(v[i])) for k, v in sorted(per_layer.items()))
        sig = _layer_signature(layer, extra)
        if sig not in sigs:
            sigs[sig] = len(sigs)
            moe = any(_is_expert(q, p, experts) for q, p in layer.named_parameters())
            label = "/".join(str(v) for _, v in extra) or type(layer).__name__
            names.append(f"{label}{' moe' if moe else ''} (first: layer {i})")
        kinds.append(sigs[sig])
    return kinds, names


def inspect_config(config: dict[str, Any], *, where: str = "config.json", trust_remote_code: bool = False,
                   source_dir: str | None = None) -> dict[str, Any]:
    """The layout facts of the language model of `config` (planner.model.generic.GenericFacts.from_json)."""
    lm, wrapper = language_config(config)
    if lm.get("model_type") in _known_types() and not trust_remote_code:
        check_causal_lm(lm["model_type"], where=where, wrapper=wrapper)
    cfg = build_config(lm, where=where, trust_remote_code=trust_remote_code, source_dir=source_dir)
    try:
        model = build_meta(cfg, trust_remote_code=trust_remote_code)
    except UserError:
        raise
    except Exception as exc:  # a config transformers accepts but its model code cannot build
        raise UserError(f"{where}: transformers cannot build this {cfg.model_type} model: "
                        f"{type(exc).__name__}: {exc}") from None
    facts = model_facts(model, cfg)
    facts["vision"] = vision_facts(config, where=where) if wrapper else {}
    return facts


def model_facts(model, cfg) -> dict[str, Any]:
    """Counts, linears, peft targets, quantized linears, tensors and layer kinds of a built model."""
    import torch

    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    num_layers = int(_attr(text_cfg, "num_hidden_layers") or 0)
    prefix, layers = decoder_layers(model, num_layers)
    experts = _num_experts(text_cfg)
    input_ids = {id(p) for p in model.get_input_embeddings().parameters()}
    out_mod = model.get_output_embeddings()
    output_ids = {id(p) for p in out_mod.parameters()} if out_mod is not None else set()
    owners = {}
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), (f"{mname}.{pname}" if mname else pname, mod))
    counts = dict.fromkeys(("embeddings", "attention", "mlp", "experts", "router", "norms", "lm_head"), 0)
    tensors: Counter = Counter()
    for name, p in model.named_parameters():  # tied parameters once
        _, owner = owners[id(p)]
        counts[_group(name, owner, p, experts, input_ids, output_ids)] += p.numel()
        tensors[p.numel()] += 1

    # Linears (nn.Linear and transformers' Conv1D, what peft and bitsandbytes replace) and 3-D experts
    from transformers.pytorch_utils import Conv1D

    lin_groups: dict[tuple, set] = defaultdict(set)
    lin_counts: Counter = Counter()
    key_pattern: dict[str, str] = {}
    layer_of = {}
    for i, layer in enumerate(layers):
        for mname, _ in layer.named_modules():
            layer_of[f"{prefix}.{i}.{mname}" if mname else f"{prefix}.{i}"] = i
    for name, mod in model.named_modules():
        if mod is out_mod or not isinstance(mod, (torch.nn.Linear, Conv1D)):
            continue
        w = mod.weight
        n_in, n_out = (w.shape[1], w.shape[0]) if isinstance(mod, torch.nn.Linear) else (w.shape[0], w.shape[1])
        idx = layer_of.get(name)
        rel = _NUM.sub(".*", name[len(prefix) + 1:].split(".", 1)[1]) if idx is not None else _NUM.sub(".*", name)
        key = (rel, int(n_in), int(n_out), mod.bias is not None, True)
        lin_groups[key].add(idx)
        lin_counts[key] += 1
        key_pattern[name] = rel
    for name, p in model.named_parameters():
        if p.dim() == 3 and name.startswith(prefix + ".") and _is_expert(name, p, experts):
            rel = name[len(prefix) + 1:].split(".", 1)[1]
            key = (rel, int(p.shape[2]), int(p.shape[1]), False, False)
            lin_groups[key].add(int(name[len(prefix) + 1:].split(".", 1)[0]))
            lin_counts[key] += int(p.shape[0])
    linears = []
    for key, idxs in sorted(lin_groups.items()):
        rel, n_in, n_out, bias, module_linear = key
        n_layers = len(idxs)
        linears.append([rel, n_in, n_out, bias, lin_counts[key] // n_layers, n_layers, not module_linear,
                        module_linear])
    return {
        "model_type": cfg.model_type,
        "counts": counts,
        "total": sum(p.numel() for p in model.parameters()),
        "linears": linears,
        "quantized": sorted(_bnb_quantized(model, key_pattern)),
        **_peft_targets(model, key_pattern),
        "tensors": sorted(tensors.items()),
        **_kinds(text_cfg, layers),
        **_peft_all_linear(model, prefix, layer_kinds(text_cfg, layers)[0]),
        "moe_layers": [i for i, layer in enumerate(layers)
                       if any(_is_expert(n, p, experts) for n, p in layer.named_parameters())],
        "buffer_bytes": sum(b.numel() * b.element_size() for b in model.buffers()),
        "default_attn": "sdpa" if getattr(model, "_supports_sdpa", False) else "eager",
        "dims": _dims(text_cfg, experts),
    }


def _kinds(cfg, layers) -> dict[str, Any]:
    kinds, names = layer_kinds(cfg, layers)
    per_kind: dict[int, list] = {}
    for i, k in enumerate(kinds):
        if k not in per_kind:
            c = Counter(p.numel() for p in layers[i].parameters())
            per_kind[k] = sorted(c.items())
    return {"layer_kinds": kinds, "kind_names": names, "kind_tensors": [per_kind[k] for k in range(len(names))]}


def _attr(cfg, key: str):
    try:
        return getattr(cfg, key, None)
    except Exception:  # per-layer configs refuse a global read of what varies by layer
        return None


def _dims(cfg, experts: int) -> dict[str, Any]:
    out = {k: _attr(cfg, k) for k in _DIMS}
    out["num_experts"] = experts
    if not out.get("head_dim") and out.get("hidden_size") and out.get("num_attention_heads"):
        out["head_dim"] = out["hidden_size"] // out["num_attention_heads"]
    return {k: v for k, v in out.items() if isinstance(v, (int, float, bool, str)) or v is None}


def _bnb_quantized(model, key_pattern: dict[str, str]) -> set[str]:
    """Linear patterns transformers' bitsandbytes integration would replace (its own skip rules:
    output embeddings, tied and last-module keys, _keep_in_fp32_modules; only nn.Linear / Conv1D)."""
    from transformers.quantizers.base import HfQuantizer

    skip = HfQuantizer.get_modules_to_not_convert(model, None, getattr(model, "_keep_in_fp32_modules", None))
    try:
        from transformers.quantizers.quantizers_utils import should_convert_module
    except ImportError:  # older layout: a plain suffix rule
        def should_convert_module(name, patterns):
            return not any(name == s or name.endswith("." + s) or name.startswith(s + ".") for s in patterns or ())
    return {rel for name, rel in key_pattern.items() if should_convert_module(name, skip)}


def _peft_targets(model, key_pattern: dict[str, str]) -> dict[str, Any]:
    """peft's resolution of "all-linear" and of each single module name, over the Linear modules."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _maybe_include_all_linear_layers, check_target_module_exists

    cfg = _maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear"), model)
    lora_all = {rel for name, rel in key_pattern.items() if check_target_module_exists(cfg, name)}
    by_name: dict[str, list[str]] = {}
    for leaf in sorted({name.rsplit(".", 1)[-1] for name in key_pattern}):
        one = LoraConfig(target_modules=[leaf])
        by_name[leaf] = sorted({rel for name, rel in key_pattern.items() if check_target_module_exists(one, name)})
    return {"lora_all": sorted(lora_all), "lora_by_name": by_name}


def _peft_all_linear(model, prefix: str, kinds: list[int]) -> dict[str, Any]:
    """(numel at rank 1, count) of every adapter tensor peft creates for target_modules="all-linear" on the
    whole model: peft applied to a copy with one layer of each kind (its own rules, including what it
    does for transformers 5 fused experts and routers), each kind's tensors times its layer count.
    LoRA A is [r, in] and B [out, r] (fused experts: [r * E, in] / [out, r * E]): linear in r."""
    from peft import LoraConfig, get_peft_model

    first: dict[int, int] = {}
    for i, k in enumerate(kinds):
        first.setdefault(k, i)
    keep = sorted(first.values())
    short = shortened(model, prefix, keep)
    layer_kind = {pos: kinds[i] for pos, i in enumerate(keep)}
    try:
        peft_model = get_peft_model(short, LoraConfig(r=1, lora_alpha=1, target_modules="all-linear"))
    except ValueError as exc:  # peft refuses some targets (Mamba's out_proj / conv1d): its words, kept
        return {"lora_all_tensors": [], "lora_all_error": str(exc)}
    out: Counter = Counter()
    mark = f"{prefix}."
    for name, p in peft_model.named_parameters():
        if not p.requires_grad or "lora_" not in name:
            continue
        rest = name.split(mark, 1)[1] if mark in name else None
        times = 1
        if rest is not None and rest.split(".", 1)[0].isdigit():
            kind = layer_kind[int(rest.split(".", 1)[0])]
            times = kinds.count(kind)
        out[p.numel()] += times
    return {"lora_all_tensors": sorted([n, c] for n, c in out.items()), "lora_all_error": None}


def vision_facts(config: dict[str, Any], *, where: str) -> dict[str, Any]:
    """Parameters of an image-text checkpoint outside its language model (vision tower, projector):
    the whole wrapper built on the meta device, minus its decoder and output embeddings."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    kwargs = {k: v for k, v in config.items() if k not in FILE_KEYS}
    # the class an image-text fine-tune loads (LLaMA-Factory: AutoModelForImageTextToText when the type
    # has one; Llama 4's causal-LM class would leave the tower out)
    image_text = config["model_type"] in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    auto = AutoModelForImageTextToText if image_text else AutoModelForCausalLM
    try:
        cfg = AutoConfig.for_model(config["model_type"], **kwargs)
        with torch.device("meta"):
            model = auto.from_config(cfg)
    except Exception as exc:  # the language model still plans; say why the tower is not counted
        return {"params": 0, "note": f"vision tower not counted ({type(exc).__name__}: {exc})"}
    total = {id(p): p.numel() for p in model.parameters()}
    lm = {id(p) for p in model.get_decoder().parameters()}
    out = model.get_output_embeddings()
    lm |= {id(p) for p in out.parameters()} if out is not None else set()
    return {"params": sum(n for i, n in total.items() if i not in lm), "wrapper": config["model_type"]}


def shortened(model, prefix: str, keep: list[int]):
    """A deep copy of meta `model` with only decoder layers `keep` (in order), config lists that run
    per layer (layer_types, ...) sliced to match, and each kept layer renumbered."""
    import torch

    parent_path, _, attr = prefix.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    full = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList([full[i] for i in keep]))
    try:
        out = copy.deepcopy(model)
    finally:
        setattr(parent, attr, full)
    n = len(full)
    configs = {id(m.config): m.config for m in out.modules() if hasattr(m, "config")}
    for cfg in configs.values():
        if vars(cfg).get("num_hidden_layers") != n:
            continue
        for k, v in per_layer_lists(cfg, n).items():
            setattr(cfg, k, [v[i] for i in keep])
        cfg.num_hidden_layers = len(keep)
    for pos, layer in enumerate(getattr(out.get_submodule(parent_path) if parent_path else out, attr)):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = pos
    return out
