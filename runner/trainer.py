"""HF Trainer wired for measurement: phase marks for the probes, a rich progress bar, the loss log.

Phases reach the probe from three places: a forward pre-hook on the model ("forward", per
micro-batch), its forward hook ("backward": the loss exists, backward is next), training_step's end
on the last micro-batch ("optimizer": clipping, step, zero_grad) and on_step_end ("end").

    >>> trainer, recorder = make_trainer(model=model, optimizer=opt, train=train, training=plan.training, ...)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from planner.train_config import TrainConfig


class Recorder:
    """What the marks saw: the (rows, padded length) of every trained micro-batch."""

    def __init__(self, probe):
        self.probe = probe
        self.batch_shapes: list[tuple[int, int]] = []

    def attach(self, model: torch.nn.Module) -> None:
        def before(module, args, kwargs):
            if not module.training:  # evaluation runs the same module: not a training phase
                return
            ids = kwargs.get("input_ids", args[0] if args else None)
            if isinstance(ids, torch.Tensor):
                self.batch_shapes.append((int(ids.shape[0]), int(ids.shape[-1])))
            self.probe.mark("forward")
            self.probe.track_inputs(v for v in kwargs.values() if isinstance(v, torch.Tensor))

        def after(module, args, kwargs, output):
            if module.training:
                self.probe.mark("backward")

        model.register_forward_pre_hook(before, with_kwargs=True)
        model.register_forward_hook(after, with_kwargs=True)


class MeasuredTrainer(Trainer):
    """Trainer that marks the optimizer phase before gradient clipping (the last micro-batch's end)."""

    probe: Any = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.probe is not None and self.accelerator.sync_gradients:
            self.probe.mark("optimizer")
        return loss


class ProbeCallback(TrainerCallback):
    def __init__(self, probe):
        self.probe = probe

    def on_train_begin(self, args, state, control, **kwargs):
        self.probe.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.probe.mark("end")


class RichProgress(TrainerCallback):
    """A rich progress bar on stderr (tqdm is off): step, loss, and the rate."""

    def __init__(self, console=None):
        self.console = console
        self.progress = None
        self.task = None
        self.loss = None

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = self.console if self.console is not None else Console(stderr=True)
        self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[loss]}"), TimeRemainingColumn(), console=console,
                                 transient=False, disable=not state.is_world_process_zero)
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, loss="")
        self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs:
            parts = [f"{k} {logs[k]:.4f}" for k in ("loss", "eval_loss") if isinstance(logs.get(k), (int, float))]
            if parts:
                self.progress.update(self.task, loss="  ".join(parts))

    def on_train_end(self, args, state, control, **kwargs):
        self.stop()

    def stop(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _checkpointing_args(enabled: bool, reentrant: bool = False) -> dict[str, Any]:
    """Activation checkpointing as the trainer's recipe runs it (LLaMA-Factory: reentrant), under the argument
    names this transformers has."""
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    kwargs = {"use_reentrant": reentrant}
    if "activation_checkpointing" in names:  # transformers >= 5.x renamed gradient_checkpointing
        return {"activation_checkpointing": enabled, "activation_checkpointing_kwargs": kwargs if enabled else None}
    return {"gradient_checkpointing": enabled, "gradient_checkpointing_kwargs": kwargs if enabled else None}


def _recipe_reentrant(train: TrainConfig) -> bool:
    from planner.trainers import recipe

    r = recipe(train.trainer)
    # peft's prepare_model_for_kbit_training path is called with use_reentrant=False (runner.build.apply_method)
    return r.checkpoint_reentrant and not (train.quantization_bit and r.kbit_upcast_fp32)


def training_arguments(*, train: TrainConfig, training: dict[str, Any], out_dir: Path, device: str,
                       max_steps: int | None, epochs: float | None, has_eval: bool,
                       deepspeed_config: Path | None) -> TrainingArguments:
    steps = max_steps or training.get("max_steps") or -1
    save_steps = int(training.get("save_steps") or 500)
    optim = train.optim if train.optim != "adamw_torch_forloop" else "adamw_torch"
    return TrainingArguments(
        output_dir=str(out_dir),
        per_device_train_batch_size=train.per_device_train_batch_size,
        per_device_eval_batch_size=train.per_device_train_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        learning_rate=float(training["learning_rate"]),
        weight_decay=0.0,
        num_train_epochs=float(epochs or training.get("num_train_epochs") or 1.0),
        max_steps=int(steps),
        optim=optim,
        # Autocast only when planned (fp32 master weights + bf16/fp16 compute); a bf16 plan trains in bf16.
        # Under DeepSpeed the flags choose its mixed precision (16-bit weights, fp32 master copy) instead.
        bf16=train.amp == "bf16" or (deepspeed_config is not None and train.dtype == "bf16"),
        fp16=train.amp == "fp16" or (deepspeed_config is not None and train.dtype == "fp16"),
        **_checkpointing_args(train.gradient_checkpointing, _recipe_reentrant(train)),
        logging_strategy="steps",
        logging_steps=int(training.get("logging_steps") or 1),
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=None,  # every checkpoint is kept: an out-of-memory stop loses no progress
        eval_strategy="steps" if has_eval else "no",
        eval_steps=save_steps if has_eval else None,
        report_to="none",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        seed=int(training.get("seed") or 0),
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        deepspeed=str(deepspeed_config) if deepspeed_config else None,
    )


def make_trainer(*, model, optimizer, args: TrainingArguments, train_ds, eval_ds, collator, probe, console,
                 show_progress: bool):
    """(MeasuredTrainer, Recorder): our optimizer when given (else args.optim), the probe's callbacks."""
    recorder = Recorder(probe)
    recorder.attach(model)
    callbacks: list[TrainerCallback] = [ProbeCallback(probe)]
    if show_progress:
        callbacks.append(RichProgress(console if console is not None and console.stderr else None))
    trainer = MeasuredTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                              data_collator=collator, callbacks=callbacks,
                              optimizers=(optimizer, None) if optimizer is not None else (None, None))
    trainer.probe = probe
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for quiet in (PrinterCallback, ProgressCallback):  # the rich bar replaces them; logs go to report.json
        trainer.remove_callback(quiet)
    return trainer, recorder


def stop_progress(trainer) -> None:
    """Close the progress bar when training stopped early (out of memory skips on_train_end)."""
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, RichProgress):
            cb.stop()
