"""Hugging Face objects as JSON, for running the plan with a plain transformers Trainer.

transformers 5 names: `dtype` (not torch_dtype) in from_pretrained, `eval_strategy` (not
evaluation_strategy), warmup as `warmup_steps`. Each file loads with `Cls(**json.load(f))`:

    training_arguments.json -> transformers.TrainingArguments
    lora_config.json        -> peft.LoraConfig
    bnb_config.json         -> transformers.BitsAndBytesConfig
    model_kwargs.json       -> AutoModelForCausalLM.from_pretrained(model, **kwargs)
"""

from __future__ import annotations

from typing import Any

from planner.train_config import hf_optim

_TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def training_arguments(plan, *, deepspeed_file: str | None, output_dir: str = "outputs") -> dict[str, Any]:
    c, hp = plan.config, plan.hparams
    out: dict[str, Any] = {
        "output_dir": output_dir,
        "per_device_train_batch_size": c.per_device_train_batch_size,
        "gradient_accumulation_steps": c.gradient_accumulation_steps,
        "learning_rate": hp.learning_rate,
        "num_train_epochs": hp.num_train_epochs,
        "lr_scheduler_type": hp.lr_scheduler_type,
        "warmup_steps": hp.warmup_steps,
        "optim": hf_optim(c.optim),
        "bf16": bool(hp.bf16),
        "fp16": bool(hp.fp16),
        "gradient_checkpointing": c.gradient_checkpointing,
        "use_liger_kernel": c.use_liger_kernel,
        "logging_steps": 10,
        "save_steps": 500,
        "report_to": "none",
        "seed": 42,
    }
    if c.gradient_checkpointing:
        out["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    if hp.val_size:
        out.update(eval_strategy="steps", eval_steps=500, per_device_eval_batch_size=c.per_device_train_batch_size)
    if deepspeed_file:
        out["deepspeed"] = deepspeed_file
    if plan.group_by_length:
        out["train_sampling_strategy"] = "group_by_length"  # transformers 5 (was group_by_length=True)
    return out


def lora_config(plan) -> dict[str, Any] | None:
    c = plan.config
    if not c.is_lora:
        return None
    return {
        "r": c.lora_rank,
        "lora_alpha": c.lora_alpha,
        "lora_dropout": c.lora_dropout,
        # peft's shorthand for every nn.Linear except the output layer (tuners_utils.INCLUDE_LINEAR_LAYERS_SHORTHAND)
        "target_modules": "all-linear" if c.lora_target == ("all",) else list(c.lora_target),
        "bias": "none",
        "task_type": "CAUSAL_LM",
        "use_dora": c.use_dora,
    }


def bnb_config(plan) -> dict[str, Any] | None:
    c = plan.config
    if c.quantization_bit == 4:
        return {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_use_double_quant": c.double_quantization,
                "bnb_4bit_compute_dtype": "bfloat16" if plan.hparams.bf16 else "float16"}
    if c.quantization_bit == 8:
        return {"load_in_8bit": True}
    return None


def model_kwargs(plan) -> dict[str, Any]:
    c = plan.config
    out: dict[str, Any] = {"dtype": _TORCH_DTYPE[c.dtype]}
    if c.quantization_bit:
        out["dtype"] = "bfloat16" if plan.hparams.bf16 else "float16"
    if c.attn_implementation:
        out["attn_implementation"] = c.attn_implementation
    if plan.model.model_type in ("baichuan", "internlm2"):
        out["trust_remote_code"] = True
    return out
