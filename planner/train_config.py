"""TrainConfig: one fine-tuning configuration, with LLaMA-Factory's names where it has one.

The memory model, the search, the exports and the runner all read this one value.

    >>> TrainConfig(finetuning_type="lora", quantization_bit=4, cutoff_len=2048, lora_rank=16)
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, replace

METHODS = ("lora", "qlora", "full", "freeze")
DTYPES = ("bf16", "fp16", "fp32")
ATTN_IMPLS = ("sdpa", "eager", "flash_attention_2")
OFFLOAD = ("none", "optimizer", "params")
# HF TrainingArguments.optim names the memory model knows.
OPTIMIZERS = (
    "adamw_torch",  # foreach implementation (torch default on CUDA)
    "adamw_torch_forloop",  # vramplan's name for adamw_torch with foreach=False
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "sgd",
)
# bitsandbytes optimizers (bitsandbytes.optim): DeepSpeed does not run them on its fp32 partitions
BNB_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
# those among them whose Adam states are 8-bit (2 B per parameter instead of 8)
EIGHT_BIT_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit")
# the LoRA settings (meaningless, and refused when the user sets them, for full and freeze tuning)
LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_target", "lora_dropout", "use_dora")


def hf_optim(optim: str) -> str:
    """The TrainingArguments.optim name of an optimizer: adamw_torch_forloop is torch's AdamW where it
    picks the for-loop implementation itself (any non-CUDA device)."""
    return "adamw_torch" if optim == "adamw_torch_forloop" else optim


@dataclass(frozen=True)
class TrainConfig:
    """What one training run does. Field names follow LLaMA-Factory where it has one."""

    finetuning_type: str = "lora"  # lora | full | freeze (qlora = lora + quantization_bit)
    quantization_bit: int | None = None  # None, 8 or 4 (bitsandbytes)
    double_quantization: bool = True  # QLoRA's nested quantization of the absmax constants
    dtype: str = "bf16"  # dtype the weights are loaded and trained in
    amp: str | None = None  # autocast dtype when dtype is fp32 (mixed precision with fp32 master weights)
    cutoff_len: int = 2048
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target: tuple[str, ...] = ("all",)  # "all" = every linear of the decoder layers
    use_dora: bool = False
    freeze_trainable_layers: int = 2  # freeze tuning: last N layers trainable (LLaMA-Factory's default)
    attn_implementation: str | None = None  # None = the model's default (Gemma-2 forces eager)
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = True
    use_liger_kernel: bool = False
    deepspeed_stage: int = 0  # 0 = no DeepSpeed
    offload: str = "none"  # none | optimizer | params (ZeRO offload to host RAM)
    trainer: str = "llamafactory"  # whose recipe trains it (planner.trainers, profiles/trainers.yaml)
    stack: str = ""  # --stack pins ("transformers==4.57"); empty: the installed versions (planner.stack)

    @property
    def method(self) -> str:
        """lora | qlora | full | freeze, as a person says it."""
        if self.finetuning_type == "lora" and self.quantization_bit:
            return "qlora"
        return self.finetuning_type

    @property
    def is_lora(self) -> bool:
        return self.finetuning_type == "lora"

    def with_(self, **changes) -> TrainConfig:
        return replace(self, **changes)

    def to_json(self) -> dict:
        out = asdict(self)
        out["lora_target"] = ",".join(self.lora_target)
        out["method"] = self.method
        return out


# -- the trainers' names for the fields, each table once ----------------------------------------------

# TrainConfig field -> LLaMA-Factory's argument (llamafactory/hparams/model_args.py, finetuning_args.py,
# data_args.py; transformers' TrainingArguments for the batch and the optimizer). dtype and amp become
# bf16/fp16/pure_bf16, the two ZeRO fields one DeepSpeed JSON file (`deepspeed:`); trainer and stack
# have no argument. The export writes these, `plan --check` reads them back.
LLAMAFACTORY_NAMES = {
    "finetuning_type": "finetuning_type", "quantization_bit": "quantization_bit",
    "double_quantization": "double_quantization", "cutoff_len": "cutoff_len",
    "per_device_train_batch_size": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "lora_rank": "lora_rank",
    "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout", "lora_target": "lora_target", "use_dora": "use_dora",
    "freeze_trainable_layers": "freeze_trainable_layers", "attn_implementation": "flash_attn", "optim": "optim",
    "gradient_checkpointing": "disable_gradient_checkpointing", "use_liger_kernel": "enable_liger_kernel",
    "deepspeed_stage": "deepspeed", "offload": "deepspeed",
}
# attn_implementation -> LLaMA-Factory's flash_attn (model_args.py AttentionFunction; "auto": the model's)
FLASH_ATTN = {"flash_attention_2": "fa2", "sdpa": "sdpa", "eager": "disabled"}


def to_llamafactory(c: TrainConfig, name: str):
    """The value of LLaMA-Factory's argument for field `name` (LLAMAFACTORY_NAMES[name]).

        >>> to_llamafactory(TrainConfig(gradient_checkpointing=False), "gradient_checkpointing")
        True
    """
    value = getattr(c, name)
    if name == "lora_target":
        return ",".join(value)
    if name == "attn_implementation":
        return FLASH_ATTN[value]
    if name == "gradient_checkpointing":
        return not value  # disable_gradient_checkpointing
    if name == "optim":
        return hf_optim(value)
    return value


def from_llamafactory(name: str, value):
    """The TrainConfig value of field `name` from its LLaMA-Factory argument (already type-checked)."""
    if name == "lora_target":
        return tuple(t.strip() for t in value.split(",") if t.strip())
    if name == "attn_implementation":
        return {v: k for k, v in FLASH_ATTN.items()}.get(value)  # auto (or unknown): the model's default
    if name == "gradient_checkpointing":
        return not value
    return value


# TrainConfig field -> the Axolotl key a person edits for it (src/axolotl/utils/schemas/)
AXOLOTL_NAMES = {
    "cutoff_len": "sequence_len", "per_device_train_batch_size": "micro_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps", "lora_rank": "lora_r", "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout", "use_dora": "peft_use_dora", "optim": "optimizer",
    "quantization_bit": "load_in_4bit/load_in_8bit", "use_liger_kernel": "plugins (LigerPlugin)",
    "gradient_checkpointing": "gradient_checkpointing", "deepspeed_stage": "deepspeed", "offload": "deepspeed",
}


# -- the memory model's view: which fields change the bytes, declared once -----------------------------

# Every TrainConfig field, by how it reaches planner.memory. The estimate's two caches key on these
# (memory_key, step_key): a field missing here would let a cache return a stale estimate, so a test fails
# when a new field is not classified.
#   step:   changes what one training step allocates (the replayed activations, planner.memory.step)
#   states: changes only the model states, the optimizer or the notes (planner.memory.zero, weights, stack)
#   shape:  the batch shape, evaluated per estimate (no cache key)
#   none:   no effect on memory
MEMORY_ROLE = {
    "finetuning_type": "step", "quantization_bit": "step", "dtype": "step", "amp": "step", "lora_rank": "step",
    "lora_dropout": "step", "lora_target": "step", "use_dora": "step", "freeze_trainable_layers": "step",
    "attn_implementation": "step", "gradient_checkpointing": "step", "use_liger_kernel": "step",
    "deepspeed_stage": "step", "trainer": "step",
    "double_quantization": "states", "optim": "states", "offload": "states", "stack": "states",
    "gradient_accumulation_steps": "states",
    "cutoff_len": "shape", "per_device_train_batch_size": "shape",
    "lora_alpha": "none",  # scales the adapter output: same tensors
}
# what of a field's value matters, where not all of it: accumulation only keeps gradients alive between
# micro-batches (> 1); a step allocates the same under every ZeRO stage but for its gradient partition
# (passed on separately as grad_scale)
_STATES_VALUE = {"gradient_accumulation_steps": lambda n: n > 1}
_STEP_VALUE = {"deepspeed_stage": lambda stage: 1 if stage else 0, "lora_target": tuple}


def memory_key(c: TrainConfig) -> tuple:
    """What an estimate's batch-independent part depends on (every step and states field).

        >>> memory_key(TrainConfig(cutoff_len=512)) == memory_key(TrainConfig(cutoff_len=4096))
        True
    """
    return tuple(_STATES_VALUE.get(name, _same)(getattr(c, name))
                 for name, role in MEMORY_ROLE.items() if role in ("step", "states"))


def step_key(c: TrainConfig) -> TrainConfig:
    """`c` with every field but the step ones at its default: what the activation replay depends on."""
    return TrainConfig(**{name: _STEP_VALUE.get(name, _same)(getattr(c, name))
                          for name, role in MEMORY_ROLE.items() if role == "step"})


def _same(value):
    return value


# -- validity: every rule that makes a TrainConfig impossible to train, written once ----------------------

@dataclass(frozen=True)
class Conflict:
    """One rule a TrainConfig breaks: the fields that clash, where (those fields as the command line spells
    them, with the config's values), why, and what to do."""

    fields: tuple[str, ...]
    where: str
    reason: str
    hint: str = ""

    @property
    def message(self) -> str:
        return f"{self.where}: {self.reason}"


def _lora_flag(c: TrainConfig, name: str) -> str:
    value = {"lora_rank": c.lora_rank, "lora_alpha": c.lora_alpha, "lora_target": ",".join(c.lora_target),
             "lora_dropout": c.lora_dropout, "use_dora": None}[name]
    flag = "--dora" if name == "use_dora" else "--" + name.replace("_", "-")
    return flag if value is None else f"{flag} {value}"


def conflicts(c: TrainConfig, given: Collection[str] = ()) -> tuple[Conflict, ...]:
    """Every rule `c` breaks, in the order a person fixes them. `given`: the fields the user set (a LoRA
    setting is refused for full/freeze tuning only when set).

        >>> [x.fields for x in conflicts(TrainConfig(offload="params", deepspeed_stage=2))]
        [('offload', 'deepspeed_stage')]
    """
    out = []
    if c.quantization_bit and c.finetuning_type != "lora":
        # bitsandbytes' 4/8-bit weights carry no gradient: peft trains adapters on top of them
        out.append(Conflict(("quantization_bit", "finetuning_type"),
                            f"--quant {c.quantization_bit} --method {c.finetuning_type}",
                            "bitsandbytes quantization trains LoRA adapters only.",
                            "Use --method qlora (or lora) with --quant, or --quant none for full/freeze tuning."))
    lora_given = [n for n in LORA_FIELDS if n in given]
    if c.finetuning_type != "lora" and lora_given:
        out.append(Conflict((*lora_given, "finetuning_type"),
                            " ".join(_lora_flag(c, n) for n in lora_given) + f" with --method {c.finetuning_type}",
                            "LoRA settings need --method lora or qlora.", "Drop the --lora-* flags or change --method."))
    if c.amp and c.dtype != "fp32":
        out.append(Conflict(("amp", "dtype"), f"--amp {c.amp} with --dtype {c.dtype}",
                            "autocast mixed precision needs fp32 weights.",
                            f"Use --dtype fp32 --amp {c.amp}, or just --dtype {c.amp}."))
    if c.deepspeed_stage not in (0, 1, 2, 3):
        out.append(Conflict(("deepspeed_stage",), f"--zero {c.deepspeed_stage}",
                            "DeepSpeed ZeRO stages are 0, 1, 2 and 3."))
    if c.offload != "none" and c.deepspeed_stage == 0:
        out.append(Conflict(("offload", "deepspeed_stage"), f"--offload {c.offload} without --zero",
                            "offloading is a DeepSpeed ZeRO feature.",
                            "Add --zero 2 (optimizer) or --zero 3 (optimizer or params)."))
    if c.offload == "params" and c.deepspeed_stage != 3:
        out.append(Conflict(("offload", "deepspeed_stage"), f"--offload params --zero {c.deepspeed_stage}",
                            "only ZeRO-3 partitions parameters.", "Use --zero 3, or --offload optimizer."))
    if c.quantization_bit and c.deepspeed_stage == 3:
        out.append(Conflict(("quantization_bit", "deepspeed_stage"), f"--quant {c.quantization_bit} --zero 3",
                            "ZeRO-3 cannot partition bitsandbytes weights.", "Use --zero 2 (or none) with QLoRA."))
    if c.optim in BNB_OPTIMIZERS and c.deepspeed_stage:
        out.append(Conflict(("optim", "deepspeed_stage"), f"--optim {c.optim} --zero {c.deepspeed_stage}",
                            "DeepSpeed runs its own optimizer on the fp32 partitions; bitsandbytes optimizers are "
                            "not supported there.", "Use --optim adamw_torch with --zero, or drop --zero."))
    return tuple(out)
