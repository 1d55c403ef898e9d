"""Train with a plan: load the model as planned, run HF Trainer, measure every phase, save the result.

Loading follows the plan exactly: dtype, bitsandbytes 4/8-bit (NF4, double quantization, bf16
compute), peft LoRA/QLoRA/DoRA (the trainer recipe's k-bit step), full and freeze tuning,
non-reentrant gradient checkpointing, Liger Kernel (CUDA), the planned attention implementation and
a DeepSpeed config for the planned ZeRO stage/offload. The model is built by runner.build, the builder
the CPU oracles and the GPU benchmarks use.

    >>> result = run_training(plan, spec, setup, out_dir=Path("out"), max_steps=2, init="random")
    >>> result.status, result.measured["peak_tensor_bytes"]
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from planner.errors import UserError
from planner.exports.plan_file import PlanFile
from planner.hardware.gpu_spec import GpuSetup
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig
from runner import build
from runner.dataset import PadCollator, RowDataset, load_samples, split_eval
from runner.measure import CpuProbe, CudaProbe, SimulatedOOM
from runner.trainer import make_trainer, stop_progress, training_arguments

BNB_OPTIMS = {"adamw_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
              "paged_adamw_32bit": "paged_adamw_32bit"}


@dataclass
class RunResult:
    status: str  # ok | oom
    device: str  # cpu | cuda
    measured: dict[str, Any]
    attn_implementation: str
    data: str  # what was trained on, in words
    batch_shapes: list[tuple[int, int]] = field(default_factory=list)  # (rows, padded length) per micro-batch
    dataset_lengths: list[int] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None  # {"phase", "step", "message"} when out of memory
    notes: list[str] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1
    per_rank: list[dict[str, Any]] = field(default_factory=list)


def pick_device(setup: GpuSetup) -> str:
    return "cuda" if torch.cuda.is_available() and not setup.gpu.is_cpu else "cpu"


def _dist_env() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def _attn(spec: ModelSpec, train: TrainConfig, device: str, notes: list[str]) -> str:
    if device == "cpu":
        impl, note = build.resolve_attn(spec, train)
        if note:
            notes.append(note)
        return impl
    impl = train.attn_implementation or spec.default_attn
    if impl == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            notes.append("flash_attention_2 planned but flash-attn is not installed: trained with sdpa "
                         "(memory-efficient kernel; same activation bytes, other speed)")
            return "sdpa"
    return impl


def _model_source(plan: PlanFile, spec: ModelSpec) -> str:
    if spec.source_dir is not None and (Path(spec.source_dir) / "config.json").is_file():
        return str(spec.source_dir)
    if plan.model.get("path") and Path(plan.model["path"]).is_dir():
        return str(plan.model["path"])
    if spec.hub_id:
        return spec.hub_id  # from the huggingface_hub cache (HF_HUB_OFFLINE keeps it local)
    raise UserError(f"--init pretrained: {spec.name} has no weights here (no model folder, no hub id).",
                    "Point the plan's model.path at a folder with safetensors weights, or use --init random.")


def load_model(plan: PlanFile, spec: ModelSpec, train: TrainConfig, *, init: str, device: str, attn: str,
               local_rank: int, deepspeed: bool, notes: list[str]):
    """(model to train with the method applied, weights folder or None), built by runner.build; on the
    device unless DeepSpeed places it."""
    target = None if deepspeed else (f"cuda:{local_rank}" if device == "cuda" else "cpu")
    if train.quantization_bit and device != "cuda" and not (train.quantization_bit == 4 and build.cpu_4bit_available()):
        raise UserError(f"{plan.where}: {train.quantization_bit}-bit loading (bitsandbytes) needs a CUDA GPU.",
                        "Apply this plan on a machine with an NVIDIA GPU, or re-plan without quantization.")
    if init == "random":
        if train.quantization_bit:
            notes.append("random weights written to a temporary folder so bitsandbytes can quantize them on load")
        # runner.build refuses bitsandbytes optimizers for the CPU oracles; the optimizer is not part of the build.
        return build.build_model(spec, train.with_(optim="adamw_torch"), device=target, attn=attn), None
    source = _model_source(plan, spec)
    try:
        return build.load_pretrained(source, spec, train, device=target, attn=attn), source
    except OSError as exc:
        raise UserError(f"--init pretrained: cannot load weights from {source} ({exc}).",
                        "Use a folder with *.safetensors weights, or --init random to measure without them.") from None
    except ValueError as exc:  # e.g. a model_type transformers only knows through remote code
        raise UserError(f"--init pretrained: transformers cannot load {source} without running its remote code "
                        f"({str(exc).splitlines()[0]}).",
                        "vramplan never runs remote code; --init random measures the same shapes.") from None


def load_tokenizer(source: str | None, spec: ModelSpec):
    """A transformers tokenizer from the model folder, or None (synthetic data on a catalog model)."""
    folder = source or (str(spec.source_dir) if spec.source_dir else None)
    if not folder:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception:  # no tokenizer files there: the run still trains (synthetic ids) and says so
        return None


def _pad_id(tokenizer) -> int:
    if tokenizer is not None:
        for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
            if tid is not None:
                return int(tid)
    return 0


def run_training(plan: PlanFile, spec: ModelSpec, setup: GpuSetup, *, out_dir: Path, max_steps: int | None,
                 epochs: float | None, init: str, synthetic: tuple[int, int] | None, merge: bool,
                 resume: Path | None, deepspeed_config: Path | None, console) -> RunResult:
    """Train one attempt. Out-of-memory (real or simulated) ends in RunResult(status="oom"), not a raise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one rich bar on stderr, not tqdm bars for loading and saving
    train = plan.config
    device = pick_device(setup)
    rank, local_rank, world = _dist_env()
    notes: list[str] = []
    if device == "cpu" and not setup.gpu.is_cpu:
        notes.append(f"no CUDA device here: trained on the CPU; memory is tensor accounting against "
                     f"{setup.gpu.name}'s {setup.gpu.memory_bytes:,} bytes")
    if device == "cpu":
        try:
            build.check_cpu_runnable(train)
        except build.NeedsCuda as exc:
            raise UserError(f"{plan.where}: {exc}") from None
    # NVML's baseline is read before this process touches CUDA, so the device figure includes our context.
    cuda_probe = CudaProbe(local_rank) if device == "cuda" else None
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    attn = _attn(spec, train, device, notes)
    build.apply_liger(spec, train, device, notes)
    training = plan.training
    seed = int(training.get("seed") or 0)
    rows, data_note = load_samples(plan, spec, synthetic=synthetic, seed=seed)
    train_rows, eval_rows = split_eval(rows, float(training.get("eval_ratio") or 0.0), seed=seed)
    result = RunResult(status="ok", device=device, measured={}, attn_implementation=attn, data=data_note,
                       dataset_lengths=[len(r.input_ids) for r in rows], notes=notes, rank=rank, world_size=world)
    # Before the model: with DeepSpeed ZeRO-3 the arguments make from_pretrained load partitioned.
    args = training_arguments(train=train, training=training, out_dir=out_dir, device=device, max_steps=max_steps,
                              epochs=epochs, has_eval=bool(eval_rows), deepspeed_config=deepspeed_config)

    if cuda_probe:
        cuda_probe.begin_load()
    torch.manual_seed(seed)
    try:
        model, source = load_model(plan, spec, train, init=init, device=device, attn=attn,
                                   local_rank=local_rank, deepspeed=deepspeed_config is not None, notes=notes)
    except torch.OutOfMemoryError as exc:
        cuda_probe.stop()
        result.status, result.measured = "oom", cuda_probe.summary()
        result.error = {"phase": "load", "step": 0, "message": str(exc).splitlines()[0][:500], "simulated": False}
        release_memory()
        return result
    tokenizer = load_tokenizer(source, spec)
    optimizer = None
    if deepspeed_config is None and train.optim not in BNB_OPTIMS:
        from runner.step import make_optimizer

        # The oracles' optimizer (implementation chosen explicitly: torch's default differs by device).
        optimizer, note = make_optimizer(model, train, lr=float(training["learning_rate"]))
        if note:
            notes.append(note)
    if device == "cpu":
        if optimizer is None:  # pragma: no cover - bitsandbytes optimizers were refused above
            raise UserError(f"{plan.where}: optim={train.optim} needs a CUDA GPU.")
        probe = CpuProbe(model, optimizer, checkpointing=train.gradient_checkpointing,
                         budget_bytes=setup.gpu.memory_bytes)
    else:
        probe = cuda_probe

    trainer, recorder = make_trainer(
        model=model, optimizer=optimizer, args=args, train_ds=RowDataset(train_rows),
        eval_ds=RowDataset(eval_rows) if eval_rows else None, collator=PadCollator(_pad_id(tokenizer)),
        probe=probe, console=console, show_progress=rank == 0)
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if eval_rows:
            trainer.evaluate()
    except torch.OutOfMemoryError as exc:
        phase = exc.phase if isinstance(exc, SimulatedOOM) else probe.phase
        step = trainer.state.global_step + 1  # the optimizer step that did not finish (resumes count on)
        result.status = "oom"
        result.error = {"phase": phase, "step": step, "message": str(exc).splitlines()[0][:500],
                        "simulated": isinstance(exc, SimulatedOOM)}
    finally:
        probe.stop()
        stop_progress(trainer)
    result.measured = probe.summary()
    result.batch_shapes = list(recorder.batch_shapes)
    result.log_history = list(trainer.state.log_history)
    if result.status == "ok":
        result.saved = save_outputs(trainer, model, tokenizer, out_dir, spec, train, init=init, source=source,
                                    merge=merge, notes=notes, is_main=rank == 0)
        result.per_rank = gather_measured(result.measured, world)
    else:  # no collective after an out-of-memory stop: the other ranks may not be there
        result.per_rank = [{"rank": rank, "peak_tensor_bytes": result.measured.get("peak_tensor_bytes")}]
    result.checkpoints = sorted(p.name for p in out_dir.glob("checkpoint-*"))
    del trainer, model, optimizer
    release_memory()
    return result


def gather_measured(measured: dict[str, Any], world: int) -> list[dict[str, Any]]:
    """Every rank's measurement on every rank (all_gather_object); just ours outside torchrun."""
    import torch.distributed as dist

    mine = {"rank": int(os.environ.get("RANK", 0)),
            **{k: v for k, v in measured.items() if k.endswith("_bytes") or k in ("steps_measured", "peak_phase")}}
    if world <= 1 or not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return sorted(out, key=lambda r: r["rank"])


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def save_outputs(trainer, model, tokenizer, out_dir: Path, spec: ModelSpec, train: TrainConfig, *, init: str,
                 source: str | None, merge: bool, notes: list[str], is_main: bool) -> list[str]:
    """The adapter (LoRA) or the model (full/freeze) as safetensors, the tokenizer, and the merged model."""
    trainer.save_model(str(out_dir))  # all ranks: DeepSpeed ZeRO-3 gathers the shards collectively
    if not is_main:
        return []
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
    else:
        notes.append("no tokenizer files next to the model: none saved with the result")
    if merge:
        _merge(model, tokenizer, out_dir, train, init=init, source=source, notes=notes)
    return sorted(p.name for p in out_dir.iterdir() if p.is_file())


def _merge(model, tokenizer, out_dir: Path, train: TrainConfig, *, init: str, source: str | None,
           notes: list[str]) -> None:
    merged_dir = out_dir / "merged"
    if not train.is_lora:
        notes.append(f"--merge: {train.finetuning_type} tuning saved the whole model already; nothing to merge")
        return
    if train.quantization_bit:
        if init == "random" or source is None:
            notes.append("--merge: a random-init quantized run has no 16-bit base weights to merge into; skipped")
            return
        # Merging into 4/8-bit weights would round the update away: reload the base in 16-bit on the CPU.
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(source, dtype=build.torch_dtype(train.dtype),
                                                    use_safetensors=True, trust_remote_code=False)
        merged = PeftModel.from_pretrained(base, str(out_dir)).merge_and_unload()
    else:
        merged = model.merge_and_unload()
    merged.save_pretrained(str(merged_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(merged_dir))
