"""llamafactory.yaml: the plan as a file `llamafactory-cli train llamafactory.yaml` runs.

Only keys LLaMA-Factory's argument parser accepts are written (profiles/llamafactory_keys.yaml, checked by
the tests); each line carries a short comment saying why it has that value. Local data files are
registered in a dataset_info.json beside it (LLaMA-Factory reads datasets only through that registry).

    >>> text, info = llamafactory_yaml(plan, model_ref="Qwen/Qwen2.5-7B", data_ref={"data": ["my.json"]},
    ...                                out_dir=Path("out"), deepspeed_file="deepspeed.json")
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from planner.train_config import LLAMAFACTORY_NAMES, to_llamafactory
from planner.units import gib

# LLaMA-Factory template names (src/llamafactory/data/template.py, register_template) by model family.
LF_TEMPLATES = {
    "qwen2": "qwen", "qwen2_moe": "qwen", "qwen3": "qwen3", "qwen3_moe": "qwen3", "mistral": "mistral",
    "mixtral": "mistral", "gemma2": "gemma2", "phi3": "phi", "glm": "glm4", "glm4": "glm4", "internlm2": "intern2",
    "baichuan": "baichuan2",
}
REMOTE_CODE = ("baichuan", "internlm2")  # families whose modeling code lives in the hub repo
# dataset_info.json tags of OpenAI-style messages (LLaMA-Factory data/README.md, "sharegpt" with role/content);
# a tool result is role "tool" there, LLaMA-Factory's default observation tag is "observation".
_MESSAGES_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                  "system_tag": "system", "observation_tag": "tool", "function_tag": "function_call"}


@cache
def llamafactory_keys() -> frozenset[str]:
    """Every key LLaMA-Factory's parser accepts (profiles/llamafactory_keys.yaml)."""
    doc = yaml.safe_load(resources.files("profiles").joinpath("llamafactory_keys.yaml").read_text(encoding="utf-8"))
    keys: set[str] = set()
    for section in ("model", "data", "finetuning", "training", "training_hf"):
        keys.update(doc[section])
    return frozenset(keys)


@cache
def transformers4_only_keys() -> frozenset[str]:
    """Keys LLaMA-Factory accepts only on transformers 4.x (removed from TrainingArguments in 5)."""
    doc = yaml.safe_load(resources.files("profiles").joinpath("llamafactory_keys.yaml").read_text(encoding="utf-8"))
    return frozenset(doc.get("training_hf4_only") or ())


def lf_template(spec) -> str:
    if spec.model_type == "llama":
        return "llama3" if spec.vocab_size >= 128000 else "llama2"
    return LF_TEMPLATES.get(spec.model_type, "default")


def _first_record(path: Path) -> dict[str, Any] | None:
    try:
        with path.open(encoding="utf-8") as fh:
            if path.suffix == ".jsonl":
                return json.loads(fh.readline())
            doc = json.load(fh)
            return doc[0] if isinstance(doc, list) and doc else doc
    except Exception:  # unreadable here (planning for another machine): the user fixes the entry
        return None


def detect_format(path: Path) -> str:
    """alpaca | sharegpt | messages | text from the first record of a JSON/JSONL file (alpaca when unsure)."""
    return dataset_entry(path)[1]


def dataset_entry(path: Path, fmt: str | None = None) -> tuple[dict[str, Any], str]:
    """(LLaMA-Factory dataset_info.json entry, format) for one local file. LLaMA-Factory reads only the columns
    an entry names beyond its defaults (data/parser.py DatasetAttr: alpaca reads instruction/input/output,
    sharegpt reads conversations; system, history and tools only when named), so every column the planner
    counts is named here; text data is a pre-training entry (`columns: {prompt: text}`, stage pt)."""
    from planner.data.formats import FormatSpec
    from planner.data.formats import detect_format as detect

    record = _first_record(path) if path.is_file() else None
    spec = None
    if record is not None:
        try:
            spec = detect(record, str(path))
        except Exception:
            spec = None
    if fmt and (spec is None or spec.format != fmt):
        spec = FormatSpec(fmt)
    if spec is None:
        spec = FormatSpec("alpaca")
    keys = set(record) if isinstance(record, dict) else set()
    entry: dict[str, Any] = {"file_name": str(path.resolve())}
    if spec.format == "text":
        entry["columns"] = {"prompt": spec.column("prompt")}
        return entry, "text"
    if spec.format == "alpaca":
        cols = {k: spec.column(k) for k in ("prompt", "query", "response", "system", "history", "tools")
                if spec.column(k) in keys}
        if cols and cols != {"prompt": "instruction", "query": "input", "response": "output"}:
            entry["columns"] = cols
        return entry, "alpaca"
    entry["formatting"] = "sharegpt"
    cols = {"messages": spec.column("messages")}
    cols.update({k: spec.column(k) for k in ("system", "tools") if spec.column(k) in keys})
    entry["columns"] = cols
    if spec.format == "messages":
        entry["tags"] = dict(_MESSAGES_TAGS)
    return entry, spec.format


def dataset_keys(data_ref: dict[str, Any] | None, out_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """(yaml keys, dataset_info.json to write or None, comment) for the plan's data."""
    if not data_ref:
        return ({"dataset": "alpaca_en_demo", "dataset_dir": "data"}, None,
                "LLaMA-Factory's demo set (run from its repo); replace with your dataset")
    if data_ref.get("dataset"):
        names = data_ref["dataset"]
        names = [names] if isinstance(names, str) else list(names)
        return ({"dataset": ",".join(names), "dataset_dir": str(data_ref.get("dataset_dir") or "data")}, None,
                "your dataset_info.json entries")
    files = data_ref.get("data") or []
    files = [files] if isinstance(files, str) else list(files)
    info: dict[str, Any] = {}
    names: list[str] = []
    registries: list[tuple[Path, list[str]]] = []
    for i, f in enumerate(files):
        if f == "demo":
            from planner.data.loaders import demo_path

            f = str(demo_path())
        if ":" in f and f.split(":", 1)[0].endswith("dataset_info.json"):
            path, entries = f.split(":", 1)
            registries.append((Path(path).expanduser().resolve(), [e.strip() for e in entries.split(",") if e.strip()]))
            continue
        path = Path(f).expanduser()
        name = f"vramplan_data_{i}" if len(files) > 1 else "vramplan_data"
        info[name], _ = dataset_entry(path, data_ref.get("format"))
        names.append(name)
    if not info and len(registries) == 1:  # the user's own registry, as it is
        reg, entries = registries[0]
        return {"dataset": ",".join(entries), "dataset_dir": str(reg.parent)}, None, "your dataset_info.json entries"
    for reg, entries in registries:  # merge into one registry beside the plan, file names made absolute
        try:
            theirs = json.loads(reg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            theirs = {}
        for e in entries:
            entry = dict(theirs.get(e) or {"file_name": e})
            if "file_name" in entry:
                entry["file_name"] = str((reg.parent / entry["file_name"]).resolve())
            info[e] = entry
            names.append(e)
    return ({"dataset": ",".join(names), "dataset_dir": str(out_dir.resolve())}, info,
            "registered in dataset_info.json beside this file")


def _all_text(data_ref: dict[str, Any] | None) -> bool:
    """Every local data file is text (LLaMA-Factory trains those with stage pt, not sft)."""
    if not data_ref or data_ref.get("dataset"):
        return False
    if data_ref.get("format"):
        return data_ref["format"] == "text"
    files = data_ref.get("data") or []
    files = [files] if isinstance(files, str) else list(files)
    paths = [Path(f).expanduser() for f in files if f != "demo" and ":" not in f]
    return bool(paths) and len(paths) == len(files) and all(p.is_file() and detect_format(p) == "text"
                                                            for p in paths)


def _line(key: str, value: Any, why: str = "") -> str:
    text = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()[1:-1]
    return f"{text}  # {why}" if why else text


def llamafactory_config(plan, *, model_ref: str, data_ref: dict[str, Any] | None, out_dir: Path,
                        deepspeed_file: str | None) -> tuple[list[tuple[str, str, Any, str]], dict | None]:
    """[(section, key, value, why)] and the dataset_info.json to write (or None)."""
    c, hp, spec = plan.config, plan.hparams, plan.model
    why = {k: w for k, _, w in plan.reasons}
    rows: list[tuple[str, str, Any, str]] = []

    def add(section: str, key: str, value: Any, reason: str = "") -> None:
        rows.append((section, key, value, reason))

    def put(section: str, name: str, reason: str = "") -> None:  # a TrainConfig field, by LLaMA-Factory's name
        add(section, LLAMAFACTORY_NAMES[name], to_llamafactory(c, name), reason)

    add("model", "model_name_or_path", model_ref)
    if spec.model_type in REMOTE_CODE:
        add("model", "trust_remote_code", True, "its modeling code lives in the hub repo")
    if c.quantization_bit:
        put("model", "quantization_bit", why.get("method", ""))
        add("model", "quantization_method", "bitsandbytes")
        if c.quantization_bit == 4:
            put("model", "double_quantization", "quantizes the absmax constants too")
    if c.use_liger_kernel:
        put("model", "use_liger_kernel", "fused kernels; the logits are never materialized")
    if c.attn_implementation:
        put("model", "attn_implementation")
    if not c.gradient_checkpointing:
        put("model", "gradient_checkpointing", why.get("gradient_checkpointing", ""))
    add("method", "stage", "pt" if _all_text(data_ref) else "sft",
        "pre-training on text: every token is a label" if _all_text(data_ref) else "")
    add("method", "do_train", True)
    put("method", "finetuning_type")
    if c.is_lora:
        put("method", "lora_rank", hp.why.get("lora_rank", ""))
        put("method", "lora_alpha", hp.why.get("lora_alpha", ""))
        put("method", "lora_dropout")
        put("method", "lora_target", "every linear layer" if c.lora_target == ("all",) else "")
        if c.use_dora:
            put("method", "use_dora")
    if c.finetuning_type == "freeze":
        put("method", "freeze_trainable_layers")
    if c.finetuning_type in ("full", "freeze") and c.dtype in ("bf16", "fp16") and not c.amp:
        add("method", "pure_bf16", True, "weights, gradients and states in 16-bit (no fp32 master copy)")
    if deepspeed_file:
        add("method", LLAMAFACTORY_NAMES["deepspeed_stage"], deepspeed_file, why.get("deepspeed", ""))
    data_keys, info, data_why = dataset_keys(data_ref, out_dir)
    add("dataset", "dataset", data_keys["dataset"], data_why)
    add("dataset", "dataset_dir", data_keys["dataset_dir"])
    add("dataset", "template", lf_template(spec), f"{spec.model_type} chat format")
    put("dataset", "cutoff_len", why.get("cutoff_len", ""))
    if plan.packing:
        add("dataset", "packing", True, "concatenate samples: no padding")
    elif _all_text(data_ref):  # LLaMA-Factory packs pre-training text by default (hparams/parser.py:520)
        add("dataset", "packing", False, "one row per text, as the token statistics count them")
    add("dataset", "overwrite_cache", True)
    add("dataset", "preprocessing_num_workers", 16)
    add("output", "output_dir", f"saves/{spec.name}/{c.method}/sft")
    add("output", "logging_steps", 10)
    add("output", "save_steps", 500)
    add("output", "plot_loss", True)
    add("output", "overwrite_output_dir", True)
    add("output", "report_to", "none")
    put("train", "per_device_train_batch_size", why.get("per_device_train_batch_size", ""))
    put("train", "gradient_accumulation_steps", f"effective batch {plan.effective_batch}")
    add("train", "learning_rate", hp.learning_rate, hp.why.get("learning_rate", ""))
    add("train", "num_train_epochs", hp.num_train_epochs, hp.why.get("num_train_epochs", ""))
    add("train", "lr_scheduler_type", hp.lr_scheduler_type)
    add("train", "warmup_steps", hp.warmup_steps, hp.why.get("warmup_steps", ""))
    if hp.bf16:
        add("train", "bf16", True, hp.why.get("precision", ""))
    elif hp.fp16:
        add("train", "fp16", True, hp.why.get("precision", ""))
    put("train", "optim")
    add("train", "ddp_timeout", 180000000, "long preprocessing on rank 0 must not time out the others")
    if hp.val_size:
        add("eval", "val_size", hp.val_size, hp.why.get("val_size", ""))
        add("eval", "per_device_eval_batch_size", c.per_device_train_batch_size)
        add("eval", "eval_strategy", "steps")
        add("eval", "eval_steps", 500)
    return rows, info


def llamafactory_yaml(plan, *, model_ref: str, data_ref: dict[str, Any] | None, out_dir: Path,
                      deepspeed_file: str | None) -> tuple[str, dict | None]:
    rows, info = llamafactory_config(plan, model_ref=model_ref, data_ref=data_ref, out_dir=out_dir,
                                     deepspeed_file=deepspeed_file)
    s = plan.setup
    hw = f"{s.count} x {s.gpu.name}" + (f" x {s.nodes} nodes" if s.nodes > 1 else "")
    lines = [f"# {plan.model.name} on {hw}: planned by vramplan (peak "
             f"{gib(plan.memory.peak_bytes, 1)} of {gib(plan.limit_bytes, 1)} limit).",
             "# Run: llamafactory-cli train llamafactory.yaml  (or ./launch.sh)"]
    section = None
    for sec, key, value, why in rows:
        if sec != section:
            lines += ["", f"### {sec}"]
            section = sec
        lines.append(_line(key, value, why))
    return "\n".join(lines) + "\n", info
