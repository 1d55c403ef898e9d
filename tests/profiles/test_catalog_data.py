"""Every shipped profile parses and follows its schema; model configs rebuild to their published sizes.

The model catalog stores config.json keys verbatim, so the checks here are about the data itself: key
types, shapes that fit together, names that resolve to one entry, and (with transformers installed) the
parameter count of the model built from each config on the meta device against the published figure.
"""

from __future__ import annotations

import importlib.resources
import re
from typing import Any

import pytest
import yaml

from planner.hardware.gpu_spec import GpuSpec
from planner.model.config_compat import language_config
from planner.model.spec import ARCHS, ModelSpec

PROFILES = importlib.resources.files("profiles")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
MIB = re.compile(r"(\d+)\s*MiB")

MODEL_KEYS_REQUIRED = {"name", "hub_id", "config"}
MODEL_KEYS_OPTIONAL = {"aliases", "published_params", "published_params_source", "published_params_exact",
                       "vision_params"}
POSITIVE_INT_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "vocab_size", "max_position_embeddings", "model_max_length", "original_max_position_embeddings",
    "num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
    "shared_expert_intermediate_size", "decoder_sparse_step", "sliding_window", "query_pre_attn_scalar",
)
BOOL_KEYS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "bias", "use_sliding_window", "norm_topk_prob")
MOE_KEYS = ("num_experts", "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
            "shared_expert_intermediate_size", "decoder_sparse_step", "mlp_only_layers")

GPU_KEYS_REQUIRED = {"name", "aliases", "nvml_names", "vendor", "memory_bytes", "memory_note",
                     "compute_capability", "bf16", "fp8", "bf16_tflops", "bandwidth_gbs", "source"}
GPU_KEYS_OPTIONAL = {"default", "fp16_tflops", "rocm_names", "gfx_arch"}


def _yaml_files(root=PROFILES, prefix: str = "") -> list[tuple[str, Any]]:
    """(path relative to profiles/, traversable) for every .yaml/.yml under profiles/, recursively."""
    found = []
    for item in root.iterdir():
        rel = f"{prefix}{item.name}"
        if item.is_dir():
            found.extend(_yaml_files(item, rel + "/"))
        elif item.name.endswith((".yaml", ".yml")):
            found.append((rel, item))
    return sorted(found, key=lambda pair: pair[0])


def _load(item) -> Any:
    return yaml.safe_load(item.read_text(encoding="utf-8"))


MODEL_FILES = [(rel, item) for rel, item in _yaml_files() if rel.startswith("models/")]
MODEL_ENTRIES = [(rel, entry) for rel, item in MODEL_FILES for entry in _load(item)["models"]]
GPUS = _load(PROFILES / "gpus.yaml")["gpus"]


def _ids(pairs):
    return [entry["name"] for _, entry in pairs]


# ---------------------------------------------------------------- every file


@pytest.mark.parametrize("rel,item", _yaml_files(), ids=[rel for rel, _ in _yaml_files()])
def test_every_profile_yaml_parses_to_a_mapping(rel, item):
    assert isinstance(_load(item), dict), f"profiles/{rel}: top level must be a mapping"


def test_catalog_sizes():
    assert len(MODEL_ENTRIES) >= 32
    assert len(GPUS) >= 18


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("rel,item", MODEL_FILES, ids=[rel for rel, _ in MODEL_FILES])
def test_model_file_layout(rel, item):
    text = item.read_text(encoding="utf-8")
    first = text.splitlines()[0]
    assert first.startswith("# ") and "Sources:" in first, f"profiles/{rel}: first line must say where facts come from"
    doc = yaml.safe_load(text)
    assert set(doc) == {"family", "models"}, f"profiles/{rel}: keys {sorted(doc)}"
    assert isinstance(doc["family"], str) and doc["family"]
    assert isinstance(doc["models"], list) and doc["models"]


@pytest.mark.parametrize("rel,entry", MODEL_ENTRIES, ids=_ids(MODEL_ENTRIES))
def test_model_entry_schema(rel, entry):
    where = f"profiles/{rel}: {entry.get('name')}"
    keys = set(entry)
    assert MODEL_KEYS_REQUIRED <= keys, f"{where}: missing {MODEL_KEYS_REQUIRED - keys}"
    assert keys <= MODEL_KEYS_REQUIRED | MODEL_KEYS_OPTIONAL, f"{where}: unknown {keys - MODEL_KEYS_REQUIRED - MODEL_KEYS_OPTIONAL}"
    assert HUB_ID.match(entry["hub_id"]), f"{where}: hub_id {entry['hub_id']!r} is not org/name"
    assert entry["name"] == entry["hub_id"].split("/")[1], f"{where}: name must be the hub repo name"
    aliases = entry.get("aliases", [])
    assert isinstance(aliases, list) and all(isinstance(a, str) and a for a in aliases), where
    if "published_params" in entry:
        published = entry["published_params"]
        assert isinstance(published, int) and not isinstance(published, bool) and published > 0, where
        source = entry.get("published_params_source", "")
        assert isinstance(source, str) and "http" in source, f"{where}: a published figure needs its source"
        assert isinstance(entry.get("published_params_exact", False), bool), where
    else:
        assert "published_params_source" not in entry and "published_params_exact" not in entry, where


def _lm(entry) -> dict[str, Any]:
    """The language model's keys (an image-text entry stores the wrapper with its text_config), with the
    config-class defaults the family's Arch records for keys the file leaves out."""
    lm, _ = language_config(entry["config"])
    arch = ARCHS.get(lm.get("model_type"))
    return {**dict(arch.defaults), **lm} if arch and "text_config" in entry["config"] else lm


@pytest.mark.parametrize("rel,entry", MODEL_ENTRIES, ids=_ids(MODEL_ENTRIES))
def test_model_config_values(rel, entry):
    cfg, where = _lm(entry), f"profiles/{rel}: {entry['name']}"
    assert cfg.get("model_type") in ARCHS, f"{where}: model_type {cfg.get('model_type')!r}"
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                "torch_dtype"):
        assert key in cfg, f"{where}: config lacks {key}"
    assert "max_position_embeddings" in cfg or "model_max_length" in cfg, where
    for key in POSITIVE_INT_KEYS:
        if cfg.get(key) is not None:
            value = cfg[key]
            assert isinstance(value, int) and not isinstance(value, bool) and value > 0, f"{where}: {key}={value!r}"
    for key in BOOL_KEYS:
        if key in cfg:
            assert isinstance(cfg[key], bool), f"{where}: {key} must be true/false"
    assert cfg["torch_dtype"] in ("bfloat16", "float16", "float32"), where
    assert cfg.get("rope_scaling") is None or isinstance(cfg["rope_scaling"], dict), where
    if "rms_norm_eps" in cfg:
        assert isinstance(cfg["rms_norm_eps"], float) and 0 < cfg["rms_norm_eps"] <= 1e-4, where

    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    assert heads % kv_heads == 0, f"{where}: {heads} query heads are not a multiple of {kv_heads} KV heads"
    if "head_dim" in cfg:
        head_dim = cfg["head_dim"]
        # Qwen3 and Gemma-2 decouple head_dim from hidden/heads, but never by more than 2x either way.
        assert 0.5 <= head_dim * heads / cfg["hidden_size"] <= 2.0, f"{where}: head_dim x heads far from hidden"
    else:
        assert cfg["hidden_size"] % heads == 0, f"{where}: hidden_size not divisible by heads"
        head_dim = cfg["hidden_size"] // heads
    assert head_dim % 8 == 0 and head_dim <= 256, f"{where}: head_dim {head_dim}"


@pytest.mark.parametrize("rel,entry", MODEL_ENTRIES, ids=_ids(MODEL_ENTRIES))
def test_model_moe_keys_consistent(rel, entry):
    cfg, where = _lm(entry), f"profiles/{rel}: {entry['name']}"
    moe = ARCHS[cfg["model_type"]].moe
    present = {k for k in MOE_KEYS if k in cfg}
    if moe is None:
        assert not present, f"{where}: dense model_type with MoE keys {sorted(present)}"
        return
    experts = cfg["num_local_experts"] if moe == "mixtral" else cfg["num_experts"]
    assert 1 <= cfg["num_experts_per_tok"] <= experts, where
    if moe != "mixtral":
        assert cfg["moe_intermediate_size"] > 0, where
        assert all(0 <= i < cfg["num_hidden_layers"] for i in cfg.get("mlp_only_layers") or []), where


def test_model_names_and_aliases_unique():
    seen: dict[str, str] = {}
    for rel, entry in MODEL_ENTRIES:
        for label in [entry["name"], *entry.get("aliases", [])]:
            key = label.lower()
            assert key not in seen, f"{label!r} in profiles/{rel} also names {seen[key]}"
            seen[key] = entry["name"]
        assert entry["hub_id"].lower() not in seen or seen[entry["hub_id"].lower()] == entry["name"]


@pytest.mark.parametrize("rel,entry", MODEL_ENTRIES, ids=_ids(MODEL_ENTRIES))
def test_model_spec_accepts_entry(rel, entry):
    cfg = _lm(entry)
    spec = ModelSpec.from_config(entry["config"], name=entry["name"], hub_id=entry["hub_id"],
                                 published_params=entry.get("published_params"), where=f"profiles/{rel}")
    assert spec.num_layers == cfg["num_hidden_layers"] and spec.hidden_size == cfg["hidden_size"]
    assert spec.num_heads % spec.num_kv_heads == 0
    assert spec.is_moe == (ARCHS[cfg["model_type"]].moe is not None)
    if spec.is_moe:
        assert spec.moe_layers and spec.num_experts_per_tok <= spec.num_experts


# ---------------------------------------------------------------- GPUs


@pytest.mark.parametrize("gpu", GPUS, ids=[g["name"] for g in GPUS])
def test_gpu_entry_schema(gpu):
    where = f"profiles/gpus.yaml: {gpu.get('name')}"
    keys = set(gpu)
    assert GPU_KEYS_REQUIRED <= keys, f"{where}: missing {GPU_KEYS_REQUIRED - keys}"
    assert keys <= GPU_KEYS_REQUIRED | GPU_KEYS_OPTIONAL, f"{where}: unknown {keys - GPU_KEYS_REQUIRED - GPU_KEYS_OPTIONAL}"
    assert gpu["vendor"] in ("nvidia", "amd"), where
    for key in ("aliases", "nvml_names", "rocm_names"):
        assert all(isinstance(v, str) and v for v in gpu.get(key, [])), f"{where}: {key}"
    memory = gpu["memory_bytes"]
    assert isinstance(memory, int) and not isinstance(memory, bool) and 8 * 2**30 <= memory <= 512 * 2**30, where
    for key in ("bf16", "fp8", "default"):
        assert isinstance(gpu.get(key, False), bool), f"{where}: {key}"
    for key in ("bf16_tflops", "bandwidth_gbs", "fp16_tflops"):
        value = gpu.get(key, 0.0)
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0, f"{where}: {key}"
    assert gpu["bandwidth_gbs"] > 0, where
    if gpu["bf16"]:
        assert gpu["bf16_tflops"] > 0, f"{where}: bf16 card needs bf16_tflops"
    else:
        assert gpu.get("fp16_tflops", 0) > 0 and not gpu["fp8"], f"{where}: a card without bf16 needs fp16_tflops"
    assert gpu["source"].startswith("https://"), where
    if gpu["vendor"] == "nvidia":
        assert re.fullmatch(r"\d{1,2}\.\d", gpu["compute_capability"] or ""), f"{where}: compute_capability"
        assert gpu["nvml_names"], f"{where}: NVIDIA cards are matched by their NVML name"
        mib = MIB.search(gpu["memory_note"])
        assert mib and memory == int(mib.group(1)) * 2**20, f"{where}: memory_bytes must be the nvidia-smi MiB x 2**20"
    GpuSpec(name=gpu["name"], memory_bytes=memory, vendor=gpu["vendor"], bf16=gpu["bf16"], fp8=gpu["fp8"],
            bf16_tflops=float(gpu["bf16_tflops"]), bandwidth_gbs=float(gpu["bandwidth_gbs"]),
            compute_capability=gpu["compute_capability"], source=gpu["source"])


def test_gpu_names_unique_and_one_default():
    seen: dict[str, str] = {}
    for gpu in GPUS:
        for label in [gpu["name"], *gpu["aliases"], *gpu["nvml_names"], *gpu.get("rocm_names", [])]:
            key = label.lower()
            assert seen.get(key, gpu["name"]) == gpu["name"], f"{label!r} names both {seen[key]} and {gpu['name']}"
            seen[key] = gpu["name"]
    defaults = [g["name"] for g in GPUS if g.get("default")]
    assert defaults == ["RTX-4090"]


def test_every_label_resolves_to_its_own_entry():
    """The planner's tolerant matching (case, punctuation, variant suffixes) must not merge two entries."""
    catalog = pytest.importorskip("planner.model.catalog")
    gpu_catalog = pytest.importorskip("planner.hardware.catalog")
    for _, entry in MODEL_ENTRIES:
        for label in [entry["name"], entry["hub_id"], *entry.get("aliases", [])]:
            found = catalog.find_model(label)
            assert found is not None and found.name == entry["name"], f"model {label!r} -> {found and found.name}"
    for gpu in GPUS:
        for label in [gpu["name"], *gpu["aliases"], *gpu["nvml_names"]]:
            found = gpu_catalog.find_gpu(label)
            assert found is not None and found.spec.name == gpu["name"], f"gpu {label!r} -> {found and found.spec.name}"


# ---------------------------------------------------------------- published sizes (transformers)

# Remote-code families are built as a LlamaConfig with the same shapes (their fused projections hold the
# same parameters); internlm2 names the q/k/v/o bias switch `bias`.
_REMOTE_RENAMES = {"baichuan": {}, "internlm2": {"bias": "attention_bias"}}
_REMOTE_DROP = {"model_type", "z_loss_weight", "attn_implementation", "model_max_length"}


def _meta_param_count(cfg: dict[str, Any]) -> int:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model_type = cfg["model_type"]
    if model_type in _REMOTE_RENAMES:
        kwargs = {_REMOTE_RENAMES[model_type].get(k, k): v for k, v in cfg.items() if k not in _REMOTE_DROP}
        kwargs.setdefault("num_key_value_heads", cfg["num_attention_heads"])
        hf_cfg = transformers.LlamaConfig(**kwargs)
    else:
        hf_cfg = transformers.AutoConfig.for_model(model_type, **{k: v for k, v in cfg.items() if k != "model_type"})
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    return sum(p.numel() for p in model.parameters())


IMAGE_TEXT = [(rel, entry) for rel, entry in MODEL_ENTRIES if "text_config" in entry["config"]]


@pytest.mark.parametrize("rel,entry", IMAGE_TEXT, ids=_ids(IMAGE_TEXT))
def test_image_text_entry_counts_the_whole_checkpoint(rel, entry):
    """The language model (planned) plus vision_params (the frozen tower and projector) is every parameter
    of the image-text model transformers builds from the stored config, as LLaMA-Factory loads it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from planner.model.catalog import find_model
    from planner.model.params import count_params

    cfg = entry["config"]
    hf_cfg = transformers.AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    with torch.device("meta"):
        model = transformers.AutoModelForImageTextToText.from_config(hf_cfg)
    spec = find_model(entry["name"]).spec
    assert spec.multimodal == cfg["model_type"] and spec.vision_params == entry["vision_params"] > 0
    assert count_params(spec).total + spec.vision_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("rel,entry", MODEL_ENTRIES, ids=_ids(MODEL_ENTRIES))
def test_meta_build_matches_published_params(rel, entry):
    computed = _meta_param_count(entry["config"])
    published = entry.get("published_params")
    if published is None:
        assert computed > 0
    elif entry.get("published_params_exact"):
        assert computed == published, f"{entry['name']}: built {computed:,}, published {published:,}"
    else:
        assert abs(computed - published) / published <= 0.005, f"{entry['name']}: built {computed:,}, published {published:,}"
