"""The memory-model flags of `plan`, and the TrainConfig they pin.

Every flag defaults to None, meaning "not pinned": the search chooses it.

    @click.command()
    @memory_options
    def plan(**opts): config = train_config_from_options(opts, TrainConfig())
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from planner.errors import UserError
from planner.train_config import ATTN_IMPLS, DTYPES, OFFLOAD, OPTIMIZERS, TrainConfig

_OPTIONS = [
    click.option("--trainer", metavar="llamafactory|trl|axolotl|peft",
                 help="Whose recipe trains the plan (what it upcasts, how it checkpoints, cuts and masks the "
                      "data): llamafactory (default), trl, axolotl, peft (transformers Trainer + "
                      "prepare_model_for_kbit_training). profiles/trainers.yaml cites each fact."),
    click.option("--stack", metavar="PKG==VER,...",
                 help="Plan for another machine's software (default: the versions installed here), e.g. "
                      "transformers==4.57 (MoE experts quantized by bitsandbytes), trl==0.21."),
    click.option("--method", type=click.Choice(["lora", "qlora", "full", "freeze"]),
                 help="Fine-tuning method. qlora = LoRA on a 4-bit (or --quant 8) base."),
    click.option("--dtype", type=click.Choice(DTYPES), help="Dtype the weights are loaded and trained in."),
    click.option("--amp", type=click.Choice(["bf16", "fp16"]),
                 help="Autocast dtype with --dtype fp32 (fp32 weights, 16-bit compute)."),
    click.option("--quant", type=click.Choice(["none", "8", "4"]),
                 help="bitsandbytes quantization of the base weights (LoRA only): 4 = NF4 (QLoRA), 8 = LLM.int8."),
    click.option("--cutoff", type=click.IntRange(min=1), metavar="N",
                 help="Maximum tokens per sample (cutoff_len); longer samples are truncated."),
    click.option("--batch-size", "batch_size", type=click.IntRange(min=1), metavar="N",
                 help="Samples per GPU per micro-batch (per_device_train_batch_size)."),
    click.option("--grad-accum", "grad_accum", type=click.IntRange(min=1), metavar="N",
                 help="Micro-batches per optimizer step (gradient_accumulation_steps)."),
    click.option("--lora-rank", "lora_rank", type=click.IntRange(min=1), metavar="N", help="LoRA rank r."),
    click.option("--lora-alpha", "lora_alpha", type=click.IntRange(min=1), metavar="N",
                 help="LoRA alpha (scaling = alpha / r); no effect on memory."),
    click.option("--lora-target", "lora_target", metavar="all|q_proj,v_proj,...",
                 help="Linear layers that get adapters: all (every decoder linear) or a comma list."),
    click.option("--lora-dropout", "lora_dropout", type=click.FloatRange(0.0, 1.0, max_open=True), metavar="X",
                 help="Dropout on the adapter input; > 0 saves a mask and a copy of each input (more memory)."),
    click.option("--dora", is_flag=True, default=None, help="Weight-decomposed LoRA (DoRA)."),
    click.option("--attn", type=click.Choice(ATTN_IMPLS),
                 help="Attention implementation; eager keeps the s x s scores (much more memory)."),
    click.option("--optim", type=click.Choice(OPTIMIZERS), metavar="NAME",
                 help=f"Optimizer (HF TrainingArguments.optim): {', '.join(OPTIMIZERS)}."),
    click.option("--grad-ckpt/--no-grad-ckpt", "grad_ckpt", default=None,
                 help="Activation checkpointing: keeps one tensor per layer, recomputes in backward "
                      "(~30% slower, far less memory)."),
    click.option("--liger/--no-liger", "liger", default=None,
                 help="Liger Kernel (fused RMSNorm, SwiGLU, RoPE, linear cross-entropy: no logits tensor)."),
    click.option("--zero", type=click.IntRange(0, 3), metavar="0..3",
                 help="DeepSpeed ZeRO stage (0 = no DeepSpeed)."),
    click.option("--offload", type=click.Choice(OFFLOAD),
                 help="ZeRO offload to host RAM: optimizer states (ZeRO 1-3) or also parameters (ZeRO 3)."),
]


def memory_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the memory-model flags to a click command."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def _targets(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise UserError("--lora-target is empty.", "Give `all` or module names, e.g. --lora-target q_proj,v_proj.")
    if "all" in names and len(names) > 1:
        raise UserError(f"--lora-target {text}: `all` cannot be combined with module names.",
                        "Use --lora-target all, or list the modules.")
    return names


def train_config_from_options(opts: dict[str, Any], base: TrainConfig) -> TrainConfig:
    """`base` with every flag the user gave applied; UserError names the flag of a bad combination.

        >>> train_config_from_options({"method": "qlora", "cutoff": 4096}, TrainConfig()).quantization_bit
        4
    """
    changes: dict[str, Any] = {}
    if opts.get("trainer") is not None:
        from planner.trainers import recipe

        changes["trainer"] = recipe(str(opts["trainer"])).name
    if opts.get("stack") is not None:
        from planner.stack import format_stack, parse_stack

        changes["stack"] = format_stack(parse_stack(str(opts["stack"])))
    method, quant = opts.get("method"), opts.get("quant")
    if method is not None:
        changes["finetuning_type"] = "lora" if method == "qlora" else method
        if method == "qlora":
            if quant == "none":
                raise UserError("--method qlora --quant none: QLoRA means a quantized base.",
                                "Use --method lora for 16-bit LoRA, or --quant 4 / 8.")
            changes["quantization_bit"] = int(quant) if quant else 4
        elif quant is None:
            changes["quantization_bit"] = None
    if quant is not None and method != "qlora":
        changes["quantization_bit"] = None if quant == "none" else int(quant)
    simple = {"dtype": "dtype", "amp": "amp", "cutoff": "cutoff_len", "batch_size": "per_device_train_batch_size",
              "grad_accum": "gradient_accumulation_steps", "lora_rank": "lora_rank", "lora_alpha": "lora_alpha",
              "lora_dropout": "lora_dropout", "dora": "use_dora", "attn": "attn_implementation", "optim": "optim",
              "grad_ckpt": "gradient_checkpointing", "liger": "use_liger_kernel", "zero": "deepspeed_stage",
              "offload": "offload"}
    for flag, name in simple.items():
        if opts.get(flag) is not None:
            changes[name] = opts[flag]
    if opts.get("lora_target") is not None:
        changes["lora_target"] = _targets(str(opts["lora_target"]))
    config = base.with_(**changes)
    _validate(config, opts)
    return config


def _flag(opts: dict[str, Any], *names: str) -> str:
    """The flags (as typed) among `names` that the user gave, for error messages."""
    given = [n for n in names if opts.get(n) is not None]
    spell = {"batch_size": "batch-size", "grad_accum": "grad-accum", "lora_rank": "lora-rank",
             "lora_alpha": "lora-alpha", "lora_target": "lora-target", "lora_dropout": "lora-dropout",
             "grad_ckpt": "grad-ckpt"}
    parts = []
    for n in given:
        value = opts[n]
        text = f"--{spell.get(n, n)}"
        if not isinstance(value, bool):
            text += f" {value}"
        parts.append(text)
    return " ".join(parts)


def _validate(c: TrainConfig, opts: dict[str, Any]) -> None:
    if c.quantization_bit and c.finetuning_type != "lora":
        raise UserError(f"{_flag(opts, 'quant', 'method')}: bitsandbytes quantization trains LoRA adapters only.",
                        "Use --method qlora (or lora) with --quant, or --quant none for full/freeze tuning.")
    if c.finetuning_type != "lora":
        lora_flags = [n for n in ("lora_rank", "lora_alpha", "lora_target", "lora_dropout", "dora")
                      if opts.get(n) is not None]
        if lora_flags:
            raise UserError(f"{_flag(opts, *lora_flags)} with --method {c.finetuning_type}: "
                            "LoRA settings need --method lora or qlora.", "Drop the --lora-* flags or change --method.")
    if c.amp and c.dtype != "fp32":
        raise UserError(f"--amp {c.amp} with --dtype {c.dtype}: autocast mixed precision needs fp32 weights.",
                        f"Use --dtype fp32 --amp {c.amp}, or just --dtype {c.amp}.")
    if c.offload != "none" and c.deepspeed_stage == 0:
        raise UserError(f"--offload {c.offload} without --zero: offloading is a DeepSpeed ZeRO feature.",
                        "Add --zero 2 (optimizer) or --zero 3 (optimizer or params).")
    if c.offload == "params" and c.deepspeed_stage != 3:
        raise UserError(f"--offload params --zero {c.deepspeed_stage}: only ZeRO-3 partitions parameters.",
                        "Use --zero 3, or --offload optimizer.")
    if c.quantization_bit and c.deepspeed_stage == 3:
        raise UserError(f"--quant {c.quantization_bit} --zero 3: ZeRO-3 cannot partition bitsandbytes weights.",
                        "Use --zero 2 (or none) with QLoRA.")
    if c.optim in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit") and c.deepspeed_stage:
        raise UserError(f"--optim {c.optim} --zero {c.deepspeed_stage}: DeepSpeed runs its own optimizer on the "
                        "fp32 partitions; bitsandbytes optimizers are not supported there.",
                        "Use --optim adamw_torch with --zero, or drop --zero.")
