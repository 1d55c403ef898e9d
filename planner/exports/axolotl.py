"""axolotl.yaml: the same plan for `axolotl train axolotl.yaml`.

Key names follow Axolotl's config schema (src/axolotl/utils/schemas/: config.py, peft.py, training.py,
model.py; the Liger plugin's keys from src/axolotl/integrations/liger/). Axolotl names the same things
differently from LLaMA-Factory: sequence_len for cutoff_len, micro_batch_size, num_epochs, lora_r,
adapter: lora|qlora, load_in_4bit/8bit, lora_target_linear for "all".

    >>> text = axolotl_yaml(plan, model_ref="Qwen/Qwen2.5-7B", data_ref=None, deepspeed_file=None)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from planner.exports.llamafactory import detect_format
from planner.train_config import hf_optim

# Axolotl dataset types per planner.data format.
_TYPES = {"alpaca": "alpaca", "sharegpt": "chat_template", "messages": "chat_template", "text": "completion"}
# Axolotl's built-in chat_template names by model family (utils/chat_templates).
_CHAT_TEMPLATES = {"qwen2": "qwen_25", "qwen2_moe": "qwen_25", "qwen3": "qwen3", "qwen3_moe": "qwen3",
                   "mistral": "mistral_v3_tekken", "mixtral": "mistral_v1", "gemma2": "gemma", "phi3": "phi_3"}


def axolotl_config(plan, *, model_ref: str, data_ref: dict[str, Any] | None,
                   deepspeed_file: str | None) -> dict[str, Any]:
    c, hp, spec = plan.config, plan.hparams, plan.model
    out: dict[str, Any] = {"base_model": model_ref}
    if spec.model_type in ("baichuan", "internlm2"):
        out["trust_remote_code"] = True
    if c.quantization_bit == 4:
        out["load_in_4bit"] = True
    elif c.quantization_bit == 8:
        out["load_in_8bit"] = True
    if c.is_lora:
        out["adapter"] = "qlora" if c.quantization_bit == 4 else "lora"
        out.update(lora_r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout)
        if c.lora_target == ("all",):
            out["lora_target_linear"] = True
        else:
            out["lora_target_modules"] = list(c.lora_target)
        if c.use_dora:
            out["peft_use_dora"] = True
    files = (data_ref or {}).get("data") or []
    files = [files] if isinstance(files, str) else list(files)
    datasets = []
    for f in files:
        if f == "demo":
            from planner.data.loaders import demo_path

            f = str(demo_path())
        if ":" in f and f.split(":", 1)[0].endswith("dataset_info.json"):
            continue  # LLaMA-Factory registries have no Axolotl equivalent; list the files instead
        path = Path(f).expanduser()
        fmt = (data_ref or {}).get("format") or (detect_format(path) if path.is_file() else "alpaca")
        entry: dict[str, Any] = {"path": str(Path(f).expanduser().resolve()), "type": _TYPES.get(fmt, "alpaca")}
        if f.endswith((".json", ".jsonl")):
            entry["ds_type"] = "json"
        if fmt == "sharegpt":
            entry.update(field_messages="conversations", message_property_mappings={"role": "from",
                                                                                   "content": "value"})
        datasets.append(entry)
    out["datasets"] = datasets or [{"path": "tatsu-lab/alpaca", "type": "alpaca"}]
    if any(d["type"] == "chat_template" for d in out["datasets"]) and spec.model_type in _CHAT_TEMPLATES:
        out["chat_template"] = _CHAT_TEMPLATES[spec.model_type]
    out.update(
        sequence_len=c.cutoff_len,
        sample_packing=bool(plan.packing),
        pad_to_sequence_len=bool(plan.packing),
        group_by_length=bool(plan.group_by_length),
        micro_batch_size=c.per_device_train_batch_size,
        gradient_accumulation_steps=c.gradient_accumulation_steps,
        num_epochs=hp.num_train_epochs,
        optimizer=hf_optim(c.optim),
        lr_scheduler=hp.lr_scheduler_type,
        learning_rate=hp.learning_rate,
        warmup_steps=hp.warmup_steps,
        bf16=bool(hp.bf16),
        fp16=bool(hp.fp16),
        tf32=False,
        gradient_checkpointing=c.gradient_checkpointing,
        sdp_attention=c.attn_implementation in (None, "sdpa"),
        flash_attention=c.attn_implementation == "flash_attention_2",
        val_set_size=hp.val_size,
        output_dir=f"./outputs/{spec.name}-{c.method}",
        train_on_inputs=False,
        logging_steps=10,
        saves_per_epoch=1,
    )
    if c.gradient_checkpointing:
        out["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if deepspeed_file:
        out["deepspeed"] = deepspeed_file
    if c.use_liger_kernel:
        out["plugins"] = ["axolotl.integrations.liger.LigerPlugin"]
        out.update(liger_rope=True, liger_rms_norm=True, liger_glu_activation=True,
                   liger_fused_linear_cross_entropy=True)
    return out


def axolotl_yaml(plan, *, model_ref: str, data_ref: dict[str, Any] | None, deepspeed_file: str | None) -> str:
    cfg = axolotl_config(plan, model_ref=model_ref, data_ref=data_ref, deepspeed_file=deepspeed_file)
    head = (f"# {plan.model.name}: planned by vramplan. Run: axolotl train axolotl.yaml\n"
            f"# cutoff_len -> sequence_len {plan.config.cutoff_len}, micro batch x accumulation = "
            f"{plan.config.per_device_train_batch_size} x {plan.config.gradient_accumulation_steps}\n")
    return head + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)
