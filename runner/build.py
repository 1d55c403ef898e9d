"""The one model builder: the model a TrainConfig trains, built as training builds it.

Used by `plan --apply` (runner.train), the CPU oracles (tensor accounting, fake-tensor simulation) and the
GPU benchmarks (benchmarks.measure_case), so they never disagree on what "QLoRA r=16 on all linears,
checkpointing on" builds: the dtype, bitsandbytes k-bit weights (runner.quantize), Liger Kernel's patches,
the attention implementation, then the trainer recipe's method step (k-bit preparation, checkpointing,
full / freeze / peft LoRA).

    >>> apply_liger(spec, train, "cuda", notes)                        # before the build; CUDA only
    >>> model = build_model(spec, TrainConfig(finetuning_type="lora"), device="cpu")   # random weights
    >>> model = load_pretrained("models/qwen", spec, train, device="cuda:0", attn="sdpa")  # a checkpoint
    >>> batch = make_batch(spec.vocab_size, batch=1, seq_len=512, device="cpu")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from planner.model.liger import liger_patch_name
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig
from runner.quantize import quantization_config, quantize_in_place

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

# config.json keys that describe the file, not the architecture.
FILE_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype",
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
    kwargs = {k: v for k, v in config.items() if k not in FILE_KEYS}
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


def _check_buildable(train: TrainConfig, device: str | None = "cpu") -> None:
    if not train.quantization_bit or device is None or device.startswith("cuda"):
        return
    if train.quantization_bit == 4 and device == "cpu" and cpu_4bit_available():
        return
    where = "a CUDA device" if train.quantization_bit == 8 else "a CUDA device (or bitsandbytes >= 0.48 on the CPU)"
    raise NeedsCuda(f"{train.quantization_bit}-bit loading (bitsandbytes) needs {where} and is not built here; "
                    f"{_FALLBACK}")


def build_model(spec: ModelSpec, train: TrainConfig, *, device: str | None = "cpu", dtype: torch.dtype | None = None,
                attn: str | None = None, kbit: str = "load") -> torch.nn.Module:
    """A random-init causal LM with `train`'s method applied (trainable flags, LoRA, checkpointing).

    device: "cpu" or "cuda[:i]" allocates; "meta" allocates nothing (parameter counting); None leaves the
    placement to DeepSpeed (built on the CPU, k-bit loaded without a device map). Under an active
    FakeTensorMode a "cpu" build yields fake tensors. dtype defaults to train.dtype, the dtype weights are
    loaded in (fp32 + train.amp means autocast at run time, see runner.step). attn: the attention
    implementation to build with, as given; by default the plan's, resolved for a CPU build (resolve_attn).
    kbit, for a k-bit plan: "load" writes the random weights to a temporary folder and loads them back
    through bitsandbytes, as a k-bit checkpoint loads (`plan --apply --init random`, the CPU oracle);
    "swap" builds in the compute dtype on the device and swaps the decoder Linears (runner.quantize;
    seconds instead of minutes for an 8B model: the GPU benchmarks).

        >>> build_model(spec, TrainConfig(finetuning_type="full", dtype="fp32"), device="meta")
    """
    import torch
    from transformers import AutoModelForCausalLM

    if kbit not in ("load", "swap"):
        raise ValueError(f"kbit={kbit!r}: 'load' or 'swap'")
    if kbit == "load":
        _check_buildable(train, device)
    impl = attn or resolve_attn(spec, train)[0]
    dtype = dtype or torch_dtype(train.dtype)
    if train.quantization_bit and kbit == "load":
        return _load_random_kbit(spec, train, dtype=dtype, attn=impl, device=device)
    if train.quantization_bit and train.finetuning_type != "lora":
        raise ValueError("quantized weights are trained through LoRA adapters only (QLoRA)")
    cfg = transformers_config(spec)
    cfg.use_cache = False  # training never keeps a KV cache (LLaMA-Factory sets the same)
    with torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=impl)
    if train.quantization_bit:  # kbit == "swap"
        quantize_in_place(model, train, compute_dtype=dtype, device=device or "cpu")
    model.train()
    return apply_method(model, spec, train)


def load_pretrained(source: str, spec: ModelSpec, train: TrainConfig, *, device: str | None, attn: str,
                    dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A checkpoint's weights (a folder or a hub id, safetensors only, never remote code) loaded as `train`
    plans (dtype, bitsandbytes k-bit) on `device` (None: DeepSpeed places it), the method applied.
    Raises transformers' OSError / ValueError for weights it cannot load.

        >>> load_pretrained("models/qwen2.5-0.5b", spec, TrainConfig(quantization_bit=4), device="cuda:0", attn="sdpa")
    """
    model = _from_pretrained(source, train, dtype=dtype or torch_dtype(train.dtype), attn=attn, device=device)
    return apply_method(model, spec, train)


def _from_pretrained(source: str, train: TrainConfig, *, dtype, attn: str, device: str | None):
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn, "use_safetensors": True,
                              "trust_remote_code": False}
    if train.quantization_bit:  # transformers quantizes every decoder nn.Linear while loading
        kwargs["quantization_config"] = quantization_config(train)
    if device is not None:
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    model.config.use_cache = False
    model.train()
    return model


def _load_random_kbit(spec: ModelSpec, train: TrainConfig, *, dtype, attn: str, device: str | None):
    """Random weights written to a temporary folder and loaded back through bitsandbytes, as a k-bit
    checkpoint loads (embeddings and lm_head stay in `dtype`), the method applied."""
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM

    tmp = tempfile.mkdtemp(prefix="vramplan-random-")
    try:
        AutoModelForCausalLM.from_config(transformers_config(spec), dtype=dtype).save_pretrained(tmp)
        model = _from_pretrained(tmp, train, dtype=dtype, attn=attn, device=device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return apply_method(model, spec, train)


def liger_supported(spec: ModelSpec) -> bool:
    """Liger Kernel is installed and has kernels for this architecture."""
    try:
        import liger_kernel.transformers as liger
    except ImportError:
        return False
    return hasattr(liger, liger_patch_name(spec))


def apply_liger(spec: ModelSpec, train: TrainConfig, device: str, notes: list[str]) -> bool:
    """Liger Kernel's class patches for this architecture when train.use_liger_kernel, before the model is
    built (CUDA only: Triton kernels); what could not be applied is said in `notes`."""
    if not train.use_liger_kernel:
        return False
    if not device.startswith("cuda"):
        notes.append("use_liger_kernel: Liger's Triton kernels need CUDA; trained without them on the CPU")
        return False
    try:
        import liger_kernel.transformers as liger
    except ImportError:
        notes.append("use_liger_kernel: liger-kernel is not installed; trained without it")
        return False
    name = liger_patch_name(spec)
    patch = getattr(liger, name, None)
    if patch is None:
        notes.append(f"use_liger_kernel: Liger has no kernels for {name.removeprefix('apply_liger_kernel_to_')}; "
                     "trained without them")
        return False
    patch()
    return True


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
        model = apply_lora(model, train)
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


def apply_lora(model: torch.nn.Module, train: TrainConfig) -> torch.nn.Module:
    """peft LoRA (DoRA) adapters on `train`'s target modules."""
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
