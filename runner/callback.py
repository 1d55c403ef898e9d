"""A TrainerCallback for any HF Trainer (LLaMA-Factory, TRL, Axolotl take `callbacks=[...]`): measure the first
steps per phase, append them to the run log `plan calibrate` refits from, and warn when the run drifts from
the plan.

Phases as in runner.measure: "load" (until training starts), then per optimizer step "forward" and
"backward" (a forward pre-hook and a forward hook on the model, per micro-batch), "optimizer"
(on_pre_optimizer_step) and "end" (on_step_end). On CUDA: torch's allocated and reserved peaks per phase
and NVML's device peak (runner.measure.CudaProbe); on the CPU: tensor accounting (CpuProbe).

    from runner.callback import VramplanCallback
    cb = VramplanCallback(plan="run/plan.yaml")          # create it before loading the model (NVML baseline)
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    trainer.train()                                       # after 3 steps: one line in runs.jsonl, drift warned
    cb.record["measured"]["peak_device_bytes"], cb.warnings
"""

from __future__ import annotations

import logging
import time
import warnings as _warnings
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from planner.units import GIB
from runner.measure import CpuProbe, CudaProbe
from runner.report import compare, device_info, stack_info
from runner.runlog import append_run

log = logging.getLogger("vramplan")
# measured key -> what the drift check calls it, most telling first (the device peak is what runs out)
DRIFT_KEYS = (("peak_device_bytes", "device peak (NVML)"), ("peak_reserved_bytes", "reserved peak"),
              ("peak_tensor_bytes", "allocated peak"))


class DriftWarning(UserWarning):
    """The measured memory of a run differs from its plan by more than the callback's tolerance."""


class VramplanCallback(TrainerCallback):
    def __init__(self, *, plan: str | Path | None = None, predicted: dict[str, Any] | None = None, steps: int = 3,
                 drift: float = 0.10, log_path: str | Path | None = None, model_name: str | None = None):
        """plan: a plan.yaml written by `plan --out` (its predicted memory); or predicted: a
        MemoryBreakdown.to_json() dict. steps: how many optimizer steps to measure. drift: the relative
        difference between measured and predicted that warns. log_path: default $VRAMPLAN_HOME/runs.jsonl."""
        if steps < 1:
            raise ValueError("steps must be at least 1")
        self.plan_path = str(plan) if plan is not None else None
        self.predicted = dict(predicted) if predicted is not None else self._plan_prediction(plan)
        self.steps, self.drift = steps, drift
        self.log_path = Path(log_path) if log_path is not None else None
        self.model_name = model_name
        self.probe = None
        self.cuda = torch.cuda.is_available()
        if self.cuda:  # before the model is loaded, ideally: NVML's baseline and the load phase
            self.probe = CudaProbe(torch.cuda.current_device())
            self.probe.begin_load()
        self.batch_shapes: list[tuple[int, int]] = []
        self.hooks: list[Any] = []
        self.record: dict[str, Any] | None = None
        self.warnings: list[str] = []
        self.logged_to: Path | None = None

    @staticmethod
    def _plan_prediction(plan) -> dict[str, Any] | None:
        if plan is None:
            return None
        from planner.exports.plan_file import PlanFile

        return PlanFile.load(plan).predicted

    # -- phases ------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.record is not None or model is None:
            return
        if self.probe is None:
            self.probe = CpuProbe(model, optimizer, checkpointing=bool(args.gradient_checkpointing))
        self.probe.start()
        self._attach(model)

    def _attach(self, model: torch.nn.Module) -> None:
        def before(module, hook_args, hook_kwargs):
            if not module.training:
                return
            ids = hook_kwargs.get("input_ids", hook_args[0] if hook_args else None)
            if isinstance(ids, torch.Tensor):
                self.batch_shapes.append((int(ids.shape[0]), int(ids.shape[-1])))
            self.probe.mark("forward")
            self.probe.track_inputs(v for v in hook_kwargs.values() if isinstance(v, torch.Tensor))

        def after(module, hook_args, hook_kwargs, output):
            if module.training:
                self.probe.mark("backward")

        self.hooks = [model.register_forward_pre_hook(before, with_kwargs=True),
                      model.register_forward_hook(after, with_kwargs=True)]

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.hooks:
            self.probe.mark("optimizer")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if not self.hooks:
            return
        self.probe.mark("end")
        if state.global_step >= self.steps:
            self.finish(args, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.hooks:  # fewer steps than asked for
            self.finish(args, model)

    # -- the record --------------------------------------------------------------------------------------
    def finish(self, args, model) -> dict[str, Any]:
        """Stop measuring; write the run-log line; warn on drift. Returns the record."""
        for h in self.hooks:
            h.remove()
        self.hooks = []
        self.probe.stop()
        measured = self.probe.summary()
        self.record = build_record(args=args, model=model, measured=measured, predicted=self.predicted,
                                   batch_shapes=self.batch_shapes, device="cuda" if self.cuda else "cpu",
                                   model_name=self.model_name)
        self.record["plan"] = self.plan_path
        if _is_main_process(args):
            self.logged_to = append_run(self.record, self.log_path)
        self.warnings = drift_warnings(self.record, self.drift)
        for w in self.warnings:
            log.warning(w)
            _warnings.warn(w, DriftWarning, stacklevel=2)
        return self.record


def _is_main_process(args) -> bool:
    return getattr(args, "process_index", 0) == 0


def build_record(*, args, model, measured: dict[str, Any], predicted: dict[str, Any] | None,
                 batch_shapes: list[tuple[int, int]], device: str, model_name: str | None = None) -> dict[str, Any]:
    """One run-log record (runner.runlog) from what the callback measured: the keys `plan --apply` writes,
    so `plan calibrate --from-log` reads both alike."""
    config = getattr(model, "config", None)
    name = model_name or getattr(config, "_name_or_path", None) or type(model).__name__
    pred, meas_common, error = compare(predicted, measured)
    shape = list(max(batch_shapes, key=lambda s: s[0] * s[1])) if batch_shapes else None
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": "ok",
        "source": "VramplanCallback",
        "model": {"name": str(name), "model_type": getattr(config, "model_type", None),
                  "hidden_size": getattr(config, "hidden_size", None),
                  "params_total": sum(p.numel() for p in model.parameters()) if model is not None else None},
        "config": {"per_device_train_batch_size": args.per_device_train_batch_size,
                   "gradient_accumulation_steps": args.gradient_accumulation_steps,
                   "gradient_checkpointing": bool(args.gradient_checkpointing),
                   "bf16": bool(args.bf16), "fp16": bool(args.fp16), "optim": str(args.optim),
                   "cutoff_len": shape[1] if shape else None},
        "gpu": {"device": device_info(device, measured)},
        "data": {"micro_batches": len(batch_shapes), "max_batch_shape": shape},
        "steps": measured.get("steps_measured", 0),
        "predicted": pred,
        "measured": {**meas_common, **{k: v for k, v in measured.items() if k not in meas_common}},
        "error": error,
        "stack": stack_info(str(getattr(config, "_attn_implementation", None))),
        "world_size": getattr(args, "world_size", 1),
    }


def drift_warnings(record: dict[str, Any], tolerance: float) -> list[str]:
    """One line when the run's most telling peak differs from the plan by more than `tolerance`."""
    err, meas, pred = record.get("error") or {}, record.get("measured") or {}, record.get("predicted") or {}
    for key, label in DRIFT_KEYS:
        e = err.get(key)
        if e is None:
            continue
        if e < -tolerance:
            return [f"vramplan: the {label} is {meas[key] / GIB:.2f} GiB, {-e:.0%} above the plan's "
                    f"{pred[key] / GIB:.2f} GiB: this run may run out of memory where the plan said it fits "
                    "(`plan calibrate` refits the card from this run's log line)"]
        if e > tolerance:
            return [f"vramplan: the {label} is {meas[key] / GIB:.2f} GiB, {e:.0%} below the plan's "
                    f"{pred[key] / GIB:.2f} GiB: the plan is conservative here (`plan calibrate` learns from it)"]
        return []
    return []
