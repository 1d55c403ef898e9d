"""PlanRequest: one `plan` run as typed values, made by the command line (planner.cli.request) and read by
planner.pipeline. The core never sees a click option or an options dict.

    >>> PlanRequest(model="Qwen2.5-7B", gpu="RTX4090", pins=(("cutoff_len", 4096),)).pinned
    {'cutoff_len': 4096}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from planner.train_config import ATTN_IMPLS, DTYPES, OFFLOAD, OPTIMIZERS

if TYPE_CHECKING:
    from planner.data.analysis import DataRequest


@dataclass(frozen=True)
class SearchOptions:
    """What the search is asked beyond the pinned settings (planner.search.search's keywords)."""

    target_batch: int | None = None
    margin: float | None = None  # None: the calibration's margin
    epochs: float | None = None
    packing: bool = False
    group_by_length: bool = False

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of planner.search.search / sweep (margin is chosen by the pipeline)."""
        return {"target_batch": self.target_batch, "margin": self.margin, "epochs": self.epochs,
                "packing": self.packing, "group_by_length": self.group_by_length}


@dataclass(frozen=True)
class PlanRequest:
    model: str
    gpu: str | None = None
    gpus: int | None = None
    nodes: int = 1
    host_mem: str | None = None  # "512G" as typed; parsed with the setup
    calibration: str | None = None  # a calibration file to plan with
    trust_remote_code: bool = False
    # The TrainConfig fields the user pinned, as (field, value) pairs in flag order: the search never changes them.
    pins: tuple[tuple[str, Any], ...] = ()
    data: DataRequest | None = None
    fixed: bool = False  # evaluate exactly the pinned configuration: no search
    sweep: bool = False
    search: SearchOptions = field(default_factory=SearchOptions)
    progress: bool = False  # show progress bars (table output on a terminal)

    @property
    def pinned(self) -> dict[str, Any]:
        return dict(self.pins)


@dataclass(frozen=True)
class TrainFlag:
    """One flag that pins TrainConfig fields: its spelling, click parameter name, the fields it sets."""

    decl: str  # as typed: "--batch-size" ("--grad-ckpt/--no-grad-ckpt" for a switch)
    param: str  # click's parameter name (the options dict key)
    fields: tuple[str, ...]  # the TrainConfig fields it pins
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    minimum: int | None = None  # an integer flag's bounds
    maximum: int | None = None
    unit_interval: bool = False  # a fraction in [0, 1)
    switch: bool = False  # --dora, or --x/--no-x: True/False, None when not given

    @property
    def spelling(self) -> str:
        return self.decl.split("/")[0]


def _flag_(decl: str, fields: tuple[str, ...] | str, **kwargs: Any) -> TrainFlag:
    param = decl.split("/")[0].removeprefix("--").replace("-", "_")
    return TrainFlag(decl, param, (fields,) if isinstance(fields, str) else fields, **kwargs)


# Every flag that pins a TrainConfig field, once: its spelling, help and values, and the fields it sets. The
# command line makes its click options from it (planner.cli.memory_options); the search's suggestions name
# the flags that pinned a field from it (planner.search.infeasible).
TRAIN_FLAGS: tuple[TrainFlag, ...] = (
    _flag_("--trainer", "trainer", metavar="llamafactory|trl|axolotl|peft",
           help="Whose recipe trains the plan (what it upcasts, how it checkpoints, cuts and masks the "
                "data): llamafactory (default), trl, axolotl, peft (transformers Trainer + "
                "prepare_model_for_kbit_training). profiles/trainers.yaml cites each fact."),
    _flag_("--stack", "stack", metavar="PKG==VER,...",
           help="Plan for another machine's software (default: the versions installed here), e.g. "
                "transformers==4.57 (MoE experts quantized by bitsandbytes), trl==0.21."),
    _flag_("--method", ("finetuning_type", "quantization_bit"), choices=("lora", "qlora", "full", "freeze"),
           help="Fine-tuning method. qlora = LoRA on a 4-bit (or --quant 8) base."),
    _flag_("--dtype", "dtype", choices=DTYPES, help="Dtype the weights are loaded and trained in."),
    _flag_("--amp", "amp", choices=("bf16", "fp16"),
           help="Autocast dtype with --dtype fp32 (fp32 weights, 16-bit compute)."),
    _flag_("--quant", "quantization_bit", choices=("none", "8", "4"),
           help="bitsandbytes quantization of the base weights (LoRA only): 4 = NF4 (QLoRA), 8 = LLM.int8."),
    _flag_("--cutoff", "cutoff_len", minimum=1, metavar="N",
           help="Maximum tokens per sample (cutoff_len); longer samples are truncated."),
    _flag_("--batch-size", "per_device_train_batch_size", minimum=1, metavar="N",
           help="Samples per GPU per micro-batch (per_device_train_batch_size)."),
    _flag_("--grad-accum", "gradient_accumulation_steps", minimum=1, metavar="N",
           help="Micro-batches per optimizer step (gradient_accumulation_steps)."),
    _flag_("--lora-rank", "lora_rank", minimum=1, metavar="N", help="LoRA rank r."),
    _flag_("--lora-alpha", "lora_alpha", minimum=1, metavar="N",
           help="LoRA alpha (scaling = alpha / r); no effect on memory."),
    _flag_("--lora-target", "lora_target", metavar="all|q_proj,v_proj,...",
           help="Linear layers that get adapters: all (every decoder linear) or a comma list."),
    _flag_("--lora-dropout", "lora_dropout", unit_interval=True, metavar="X",
           help="Dropout on the adapter input; > 0 saves a mask and a copy of each input (more memory)."),
    _flag_("--dora", "use_dora", switch=True, help="Weight-decomposed LoRA (DoRA)."),
    _flag_("--attn", "attn_implementation", choices=ATTN_IMPLS,
           help="Attention implementation; eager keeps the s x s scores (much more memory)."),
    _flag_("--optim", "optim", choices=OPTIMIZERS, metavar="NAME",
           help=f"Optimizer (HF TrainingArguments.optim): {', '.join(OPTIMIZERS)}."),
    _flag_("--grad-ckpt/--no-grad-ckpt", "gradient_checkpointing", switch=True,
           help="Activation checkpointing: keeps one tensor per layer, recomputes in backward "
                "(~30% slower, far less memory)."),
    _flag_("--liger/--no-liger", "use_liger_kernel", switch=True,
           help="Liger Kernel (fused RMSNorm, SwiGLU, RoPE, linear cross-entropy: no logits tensor)."),
    _flag_("--zero", "deepspeed_stage", minimum=0, maximum=3, metavar="0..3",
           help="DeepSpeed ZeRO stage (0 = no DeepSpeed)."),
    _flag_("--offload", "offload", choices=OFFLOAD,
           help="ZeRO offload to host RAM: optimizer states (ZeRO 1-3) or also parameters (ZeRO 3)."),
)


def flag_of(param: str) -> TrainFlag:
    return next(f for f in TRAIN_FLAGS if f.param == param)
