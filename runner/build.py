"""Build the model a training run would train: random weights, the method applied as training does.

Shared by the CPU oracles (tensor accounting, fake-tensor simulation) and the trainer, so the three
never disagree on what "LoRA r=16 on all linears, checkpointing on" builds.

    >>> model = build_model(spec, TrainConfig(finetuning_type="lora"), device="cpu")
    >>> batch = make_batch(spec.vocab_size, batch=1, seq_len=512, device="cpu")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

# config.json keys that describe the file, not the architecture.
_FILE_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype",
              "_name_or_path")

# Keys a Llama-shaped remote-code config shares with LlamaConfig, and what LlamaConfig calls them.
_LLAMA_KEYS = {
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "vocab_size": "vocab_size",
    "rms_norm_eps": "rms_norm_eps",
    "tie_word_embeddings": "tie_word_embeddings",
    "rope_theta": "rope_theta",
    "hidden_act": "hidden_act",
    "bias": "attention_bias",  # InternLM2 calls its q/k/v/o bias "bias"
}


class NeedsCuda(NotImplementedError):
    """The configuration needs CUDA-only machinery (bitsandbytes, Liger's Triton kernels, DeepSpeed
    ZeRO); the CPU oracles cannot run it, and the caller should fall back to the analytic model."""


def torch_dtype(name: str) -> torch.dtype:
    """"bf16" -> torch.bfloat16 (TrainConfig's names)."""
    import torch

    return getattr(torch, DTYPES[name])


def transformers_config(spec_or_config: ModelSpec | dict[str, Any]) -> PretrainedConfig:
    """The transformers config of a ModelSpec (its config.json) or of a config dict.

    Remote-code families (Baichuan, InternLM2) are built as the LlamaConfig with the same shapes:
    their fused projections hold the same parameters (see planner.model.spec.ARCHS). Remote code is
    never executed.

        >>> transformers_config({"model_type": "qwen2", "hidden_size": 64, ...}).model_type
        'qwen2'
    """
    from transformers import AutoConfig

    if isinstance(spec_or_config, ModelSpec):
        config, model_type = spec_or_config.config, spec_or_config.model_type
        counted_as = spec_or_config.arch.counted_as
    else:
        from planner.model.spec import ARCHS

        config, model_type = spec_or_config, spec_or_config["model_type"]
        counted_as = ARCHS[model_type].counted_as if model_type in ARCHS else None
    if counted_as == "llama":
        kwargs = {new: config[old] for old, new in _LLAMA_KEYS.items() if config.get(old) is not None}
        kwargs["max_position_embeddings"] = int(
            config.get("max_position_embeddings") or config.get("model_max_length") or 4096)
        return AutoConfig.for_model("llama", **kwargs)
    kwargs = {k: v for k, v in config.items() if k not in _FILE_KEYS}
    if counted_as:  # built as the family it is counted as; its own rotary variant (mrope) left out
        kwargs = {k: v for k, v in kwargs.items() if k not in ("rope_scaling", "rope_parameters", "vision_config")}
        return AutoConfig.for_model(counted_as, **kwargs)
    return AutoConfig.for_model(model_type, **kwargs)


def resolve_attn(spec: ModelSpec, train: TrainConfig, attn: str | None = None) -> tuple[str, str | None]:
    """(attn_implementation to build with, note) for a CPU build.

    flash_attention_2 needs CUDA; on CPU it is stood in for by sdpa, whose CPU kernel
    (aten._scaled_dot_product_flash_attention_for_cpu) saves the same tensors for backward
    (q, k, v, out and the fp32 logsumexp), so activation bytes match.
    """
    impl = attn or train.attn_implementation or spec.default_attn
    if impl == "flash_attention_2":
        return "sdpa", "flash_attention_2 measured as sdpa (CPU flash kernel saves the same tensors)"
    return impl, None


_FALLBACK = "the CPU oracles cannot run it. Use the analytic model, or measure on a GPU."


def check_cpu_runnable(train: TrainConfig) -> None:
    """Raise NeedsCuda for what cannot run on a CPU at all: bitsandbytes 8-bit weights and optimizers
    (4-bit NF4 runs on the CPU with bitsandbytes >= 0.48: load, forward and backward)."""
    _check_buildable(train, "cpu")
    if train.optim in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"):
        raise NeedsCuda(f"optim={train.optim} is a bitsandbytes optimizer and needs a CUDA device; {_FALLBACK}")


def check_oracle_runnable(train: TrainConfig) -> None:
    """check_cpu_runnable, and what the oracles do not model: Liger kernels (Triton, GPU only; their
    fused cross-entropy changes the logits memory) and DeepSpeed ZeRO / offload (partitioned states)."""
    check_cpu_runnable(train)
    if train.use_liger_kernel:
        raise NeedsCuda(f"Liger kernels are Triton kernels and need a GPU; {_FALLBACK}")
    if train.deepspeed_stage or train.offload != "none":
        raise NeedsCuda(f"DeepSpeed ZeRO (stage {train.deepspeed_stage}, offload {train.offload}) partitions "
                        f"and offloads across processes; {_FALLBACK}")


def cpu_4bit_available() -> bool:
    """bitsandbytes with a CPU backend for 4-bit (NF4) weights: 0.48 and later."""
    try:
        import bitsandbytes
    except ImportError:
        return False
    parts = bitsandbytes.__version__.split(".")
    return (int(parts[0]), int(parts[1])) >= (0, 48)


def _check_buildable(train: TrainConfig, device: str = "cpu") -> None:
    if not train.quantization_bit:
        return
    if train.quantization_bit == 4 and device == "cpu" and cpu_4bit_available():
        return
    where = "a CUDA device" if train.quantization_bit == 8 else "a CUDA device (or bitsandbytes >= 0.48 on the CPU)"
    raise NeedsCuda(f"{train.quantization_bit}-bit loading (bitsandbytes) needs {where} and is not built here; "
                    f"{_FALLBACK}")


def build_model(spec: ModelSpec, train: TrainConfig, *, device: str = "cpu", dtype: torch.dtype | None = None,
                attn: str | None = None) -> torch.nn.Module:
    """A random-init causal LM with `train`'s method applied (trainable flags, LoRA, checkpointing).

    device: "cpu" (or "cuda") allocates; "meta" allocates nothing (parameter counting). Under an active
    FakeTensorMode a "cpu" build yields fake tensors. dtype defaults to train.dtype, the dtype
    weights are loaded in (fp32 + train.amp means autocast at run time, see runner.step).

        >>> build_model(spec, TrainConfig(finetuning_type="full", dtype="fp32"), device="meta")
    """
    import torch
    from transformers import AutoModelForCausalLM

    _check_buildable(train, device)
    impl, _ = resolve_attn(spec, train, attn)
    cfg = transformers_config(spec)
    cfg.use_cache = False  # training never keeps a KV cache (LLaMA-Factory sets the same)
    if train.quantization_bit:
        model = load_quantized_random(spec, train, dtype=dtype or torch_dtype(train.dtype), attn=impl)
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype or torch_dtype(train.dtype),
                                                     attn_implementation=impl)
    model.train()
    return apply_method(model, spec, train)


def quantization_config(train: TrainConfig):
    """The BitsAndBytesConfig of a k-bit plan (what LLaMA-Factory's quantization_bit / double_quantization ask)."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.float16 if train.dtype == "fp16" else torch.bfloat16
    if train.quantization_bit == 4:
        # QLoRA (Dettmers et al. 2023): NF4 storage, double quantization, 16-bit compute. BitsAndBytesConfig's
        # own defaults (fp4, no double quant, fp32 compute) are not QLoRA's, so every field is set.
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=train.double_quantization,
                                  bnb_4bit_compute_dtype=compute)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_quantized_random(spec: ModelSpec, train: TrainConfig, *, dtype, attn: str, device: str = "cpu"):
    """Random weights written to a temporary folder and loaded back through bitsandbytes, as a k-bit
    checkpoint loads (transformers quantizes every decoder nn.Linear while loading; embeddings and lm_head
    stay in `dtype`)."""
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM

    tmp = tempfile.mkdtemp(prefix="vramplan-random-")
    try:
        AutoModelForCausalLM.from_config(transformers_config(spec), dtype=dtype).save_pretrained(tmp)
        model = AutoModelForCausalLM.from_pretrained(
            tmp, dtype=dtype, attn_implementation=attn, quantization_config=quantization_config(train),
            device_map={"": device}, use_safetensors=True, trust_remote_code=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    model.config.use_cache = False
    return model


def apply_method(model: torch.nn.Module, spec: ModelSpec, train: TrainConfig) -> torch.nn.Module:
    """The method step of the trainer's recipe (planner.trainers) on a loaded model: k-bit preparation,
    checkpointing, full / freeze / LoRA. Shared by the oracles and `plan --apply`.

    - peft recipe (and TRL <= 0.22): peft.prepare_model_for_kbit_training on a quantized model (fp32 upcast
      of every non-quantized weight, checkpointing), then LoRA.
    - LLaMA-Factory, Axolotl, TRL >= 0.23: no upcast; checkpointing with input gradients
      (LLaMA-Factory: model_utils/checkpointing.py:80-101), then LoRA with fp32 adapters (adapter.py:286-288);
      TRL casts a quantized model's adapters to bf16 (sft_trainer.py:905-911 in 1.16.0).
    """
    from planner.trainers import recipe

    r = recipe(train.trainer)
    if train.quantization_bit and r.kbit_upcast_fp32:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif train.gradient_checkpointing:
        enable_checkpointing(model, reentrant=r.checkpoint_reentrant)
    if train.finetuning_type == "full":
        model.requires_grad_(True)
    elif train.finetuning_type == "freeze":
        _freeze_all_but_last_layers(model, spec.num_layers, train.freeze_trainable_layers)
    elif train.finetuning_type == "lora":
        model = _apply_lora(model, train)
        if train.quantization_bit and not r.kbit_adapter_fp32:
            compute = torch_dtype("fp16" if train.dtype == "fp16" else "bf16")
            for name, param in model.named_parameters():
                if param.requires_grad and "lora_magnitude_vector" not in name:
                    param.data = param.data.to(compute)
    else:
        raise ValueError(f"unknown finetuning_type {train.finetuning_type!r}")
    return model


def enable_checkpointing(model: torch.nn.Module, reentrant: bool = False) -> None:
    """Activation checkpointing on every decoder layer, as HF Trainer turns it on; reentrant as LLaMA-Factory
    runs it by default (use_reentrant_gc=True; same tensors kept on the CPU oracle, tests/runner/test_gates.py).

    transformers >= 5 also calls enable_input_require_grads() here (for input_ids models), which
    is what LoRA/freeze need so that gradients flow through checkpointed frozen layers.
    """
    kwargs = {"use_reentrant": reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _freeze_all_but_last_layers(model: torch.nn.Module, num_layers: int, trainable_layers: int) -> None:
    # LLaMA-Factory freeze tuning (model/adapter.py _setup_freeze_tuning): N > 0 trains the last N
    # decoder layers, N < 0 the first |N|; embeddings, final norm and lm_head stay frozen.
    if trainable_layers > 0:
        ids = range(max(0, num_layers - trainable_layers), num_layers)
    else:
        ids = range(min(-trainable_layers, num_layers))
    marks = tuple(f".layers.{i}." for i in ids)
    for name, p in model.named_parameters():
        p.requires_grad_(any(m in f".{name}" for m in marks))


def lora_target_modules(train: TrainConfig) -> str | list[str]:
    """peft target_modules: "all" = every linear of the decoder, lm_head excluded (peft's "all-linear")."""
    if tuple(train.lora_target) == ("all",):
        return "all-linear"
    return list(train.lora_target)


def _apply_lora(model: torch.nn.Module, train: TrainConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=train.lora_rank,
        lora_alpha=train.lora_alpha,
        lora_dropout=train.lora_dropout,
        target_modules=lora_target_modules(train),
        use_dora=train.use_dora,
        task_type="CAUSAL_LM",
    )
    # peft's default autocast_adapter_dtype=True keeps adapters in fp32 on a bf16/fp16 base.
    return get_peft_model(model, config)


def make_batch(vocab_size: int, batch: int, seq_len: int, *, device: str = "cpu", attention_mask: bool = True,
               prompt_tokens: int = 0) -> dict[str, torch.Tensor]:
    """A packed, unpadded batch: input_ids, attention_mask (all ones) and labels (= input_ids).

    prompt_tokens > 0 masks the first tokens of each row out of the loss (-100), as
    supervised fine-tuning masks the prompt. attention_mask=False leaves the mask out, which
    transformers treats the same as an all-ones mask for sdpa (it drops it to use is_causal).
    """
    import torch

    ids = torch.randint(0, vocab_size, (batch, seq_len), device=device)
    labels = ids.clone()
    if prompt_tokens:
        labels[:, :prompt_tokens] = -100
    out = {"input_ids": ids, "labels": labels}
    if attention_mask:
        out["attention_mask"] = torch.ones_like(ids)
    return out
