"""TrainConfig: one fine-tuning configuration, with LLaMA-Factory's names where it has one.

The memory model, the search, the exports and the runner all read this one value.

    >>> TrainConfig(finetuning_type="lora", quantization_bit=4, cutoff_len=2048, lora_rank=16)
"""

from __future__ import annotations

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
