"""`plan --apply`: train with the plan, measure, report predicted vs measured memory.

plan -> (torchrun relaunch when several GPUs) -> train -> report.json, table, loss.png, run log.
Out of memory never ends in a traceback: the report says where, how much, and the next smaller
config (written to OUT/plan.next.yaml); --retry trains that one, resuming from the last checkpoint.

    >>> apply_plan(PlanFile.load("runs/a/plan.yaml"), out_dir=Path("runs/b"), max_steps=20)
    0
    python -m planner.cli.apply --plan runs/a/plan.yaml --out runs/b --max-steps 20   (the torchrun entry)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from planner.errors import UserError
from planner.exports.plan_file import PlanFile, pin_data_paths
from planner.exports.writer import EXPORT_FILES  # what `plan --out` writes: the plan, not a run's results

MAX_ATTEMPTS = 4


def use_expandable_segments(env: dict | None = None) -> bool:
    """Set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True unless the user set the variable (then theirs
    stays). The planner's device model assumes the same (planner.memory.overheads.allocator_setting).
    Returns True when it was set here. Must run before CUDA is initialized: the allocator reads it once."""
    from planner.memory.overheads import ALLOC_CONF, EXPANDABLE

    env = os.environ if env is None else env
    if env.get(ALLOC_CONF):
        return False
    env[ALLOC_CONF] = EXPANDABLE
    return True


def _console(console):
    if console is not None:
        return console
    from rich.console import Console

    return Console(highlight=False)


def check_out_dir(out_dir: Path, *, force: bool) -> str:
    """"new" | "finished" | "unfinished"; a non-empty folder without --force is a UserError."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: is a file, not a folder.", "Give --out a folder path.")
    if not out_dir.is_dir() or all(p.name in EXPORT_FILES for p in out_dir.iterdir()):
        return "new"  # empty, or holding only the plan's exports (`plan --out DIR --apply` writes them first)
    status = None
    report = out_dir / "report.json"
    if report.is_file():
        try:
            status = json.loads(report.read_text(encoding="utf-8")).get("status")
        except (json.JSONDecodeError, OSError):
            status = None
    state = "finished" if status == "ok" else "unfinished"
    if not force:
        what = {"finished": "it holds a finished run, report.json",
                "unfinished": "it holds an unfinished run or other files"}[state]
        raise UserError(f"--out {out_dir}: the folder is not empty ({what}); a run never overwrites one.",
                        "Choose another --out, or pass --force to write into it (an unfinished run "
                        "resumes from its last checkpoint).")
    return state


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = [(int(p.name.split("-")[-1]), p) for p in out_dir.glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return max(found)[1] if found else None


def _resume_point(out_dir: Path, state: str, max_steps: int | None) -> Path | None:
    """The checkpoint to continue from: an unfinished run's last one, or a finished run's when training longer."""
    ckpt = latest_checkpoint(out_dir) if state != "new" else None
    if ckpt is None:
        return None
    step = int(ckpt.name.split("-")[-1])
    if max_steps is not None:
        return ckpt if step < int(max_steps) else None
    return ckpt if state == "unfinished" else None


def _pin_paths(plan: PlanFile) -> PlanFile:
    """Data paths made absolute, so OUT/plan.yaml re-applies from any working directory."""
    return plan.with_(data=pin_data_paths(plan.data, Path.cwd()))


def effective_plan(plan: PlanFile, *, max_steps, epochs, init, synthetic) -> PlanFile:
    """The plan as it will train: command-line overrides written into it (so re-applying repeats the run)."""
    training = dict(plan.training)
    if max_steps:
        training["max_steps"] = int(max_steps)
    if epochs:
        training["num_train_epochs"] = float(epochs)
        if not max_steps:
            training["max_steps"] = None
    if init:
        training["init"] = init
    if training.get("init") not in ("pretrained", "random"):
        raise UserError(f"{plan.where}: training.init {training.get('init')!r}: use pretrained or random.")
    data = dict(plan.data)
    if synthetic:
        data = {"synthetic": {"samples": int(synthetic[0]), "length": int(synthetic[1])}}
    return _pin_paths(plan.with_(training=training, data=data))


def predict(spec, train, setup, seq_lens: list[int] | None) -> tuple[dict[str, Any] | None, str | None]:
    """The memory model's breakdown for exactly the shapes trained; (None, why) when unavailable."""
    try:
        from planner.memory import estimate_memory
    except ImportError:
        return None, "planner.memory is not available: no prediction to compare with"
    try:
        return estimate_memory(spec, train, setup, seq_lens=tuple(seq_lens) if seq_lens else None).to_json(), None
    except Exception as exc:  # a model gap must not lose the measurement: report it instead
        return None, f"the memory model could not predict this config ({type(exc).__name__}: {exc})"


def _seq_lens(result, train) -> list[int]:
    """One micro-batch's padded row lengths, as planner.memory takes them: the largest batch trained
    (b x s tokens), else (nothing trained) the batch the longest samples would make."""
    if result.batch_shapes:
        b, s = max(result.batch_shapes, key=lambda shape: (shape[0] * shape[1], shape[1]))
        return [s] * b
    longest = min(max(result.dataset_lengths, default=train.cutoff_len), train.cutoff_len)
    return [longest] * train.per_device_train_batch_size


def _predict_peak(spec, setup, seq_lens):
    def fn(train):
        pred, _ = predict(spec, train, setup, seq_lens)
        return int(pred["peak_tensor_bytes"]) if pred else None
    return fn


def _archive_checkpoints(out_dir: Path, attempt: int) -> None:
    """Checkpoints of a config the next attempt cannot resume: kept under OUT/attempts/N/."""
    found = list(out_dir.glob("checkpoint-*"))
    if found:
        dest = out_dir / "attempts" / str(attempt)
        dest.mkdir(parents=True, exist_ok=True)
        for p in found:
            shutil.move(str(p), str(dest / p.name))


def _oom_info(report, err: dict[str, Any], checkpoints: list[str], setup, smaller, out_dir: Path) -> dict[str, Any]:
    """report.json's `oom`: where the run stopped (err: RunResult.error's phase/step/message), the peaks,
    the checkpoints kept and the next smaller plan."""
    info = {"phase": err.get("phase"), "step": err.get("step"), "simulated": err.get("simulated", False),
            "message": err.get("message"),
            "measured_peak_bytes": report["measured"].get("peak_tensor_bytes"),
            "predicted_peak_bytes": report["predicted"].get("peak_tensor_bytes"),
            "budget_bytes": setup.gpu.memory_bytes, "checkpoints": checkpoints}
    if smaller is not None:
        info["next"] = {"changes": list(smaller.changes), "predicted_peak_bytes": smaller.predicted_bytes,
                        "confident": smaller.confident, "plan": str(out_dir / "plan.next.yaml")}
    return info


def print_oom(oom: dict[str, Any], out_dir: Path, console, *, retrying: bool) -> None:
    from runner.report import human_bytes as g

    kind = " (simulated: tracked tensors passed the card's memory)" if oom["simulated"] else ""
    console.print(f"[bold red]Out of memory[/] in [bold]{oom['phase']}[/] at step {oom['step']}{kind}.")
    console.print(f"  measured peak so far {g(oom['measured_peak_bytes'])}, predicted "
                  f"{g(oom['predicted_peak_bytes'])}, budget {g(oom['budget_bytes'])}")
    kept = ", ".join(oom["checkpoints"]) or "none yet"
    console.print(f"  checkpoints kept in {out_dir}: {kept}")
    nxt = oom.get("next")
    if nxt is None:
        console.print("  nothing smaller is left for this method: plan for a larger card or more GPUs.")
        return
    pred = f" (predicted {g(nxt['predicted_peak_bytes'])})" if nxt["predicted_peak_bytes"] else ""
    console.print(f"  next smaller config{pred}: " + "; ".join(nxt["changes"]))
    if not retrying:
        console.print(f"  retry: plan --apply {nxt['plan']} --out {out_dir} --force   (or rerun with --retry)")


def _finish(report: dict[str, Any], out_dir: Path, console) -> None:
    from runner.distributed import PARENT_ENV
    from runner.report import plot_loss, render_report, write_report
    from runner.runlog import append_run

    note = plot_loss(report, out_dir)
    if note:
        report["notes"].append(note)
    write_report(report, out_dir)
    if not os.environ.get(PARENT_ENV):  # under our own torchrun relaunch the parent shows it
        render_report(report, console)
    try:
        append_run(report)
    except OSError as exc:  # a read-only home must not fail the run
        console.print(f"[yellow]note:[/] run log not written ({exc})")


def _attempt(plan: PlanFile, spec, setup, *, out_dir: Path, merge: bool, resume: Path | None,
             console) -> tuple[dict[str, Any] | None, Any]:
    """One in-process training attempt -> (report on rank 0 else None, RunResult)."""
    from runner.distributed import write_deepspeed_config
    from runner.report import build_report
    from runner.train import run_training

    ds = write_deepspeed_config(plan.config, out_dir)
    result = run_training(plan, spec, setup, out_dir=out_dir, max_steps=plan.training.get("max_steps"),
                          epochs=None, init=plan.training["init"], synthetic=None, merge=merge, resume=resume,
                          deepspeed_config=ds, console=console)
    if result.rank != 0:
        return None, result
    prediction, why = predict(spec, plan.config, setup, _seq_lens(result, plan.config))
    return build_report(plan=plan, spec=spec, setup=setup, result=result, prediction=prediction,
                        prediction_note=why), result


def _launch_distributed(plan: PlanFile, setup, *, out_dir: Path, merge: bool, resume: Path | None,
                        node_rank, master_addr, master_port, console) -> tuple[int, dict | None]:
    from runner.distributed import launch, node_commands, torchrun_command, write_deepspeed_config

    plan_path = plan.save(out_dir / "plan.yaml")
    write_deepspeed_config(plan.config, out_dir)
    extra = (["--merge"] if merge else []) + (["--resume", str(resume)] if resume else [])
    if setup.nodes > 1 and node_rank is None:
        console.print(f"{setup.nodes} nodes x {setup.count} GPUs: run on each node (same files at the same paths):")
        for r, line in enumerate(node_commands(plan_path, out_dir, nproc=setup.count, nnodes=setup.nodes,
                                               master_addr=master_addr, master_port=master_port, extra=extra)):
            console.print(f"[bold]node {r}:[/] {line}", soft_wrap=True)
        return 0, None
    if not setup.gpu.is_cpu:
        import torch

        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if found < setup.count:
            raise UserError(f"{plan.where}: the plan runs on {setup.count} GPUs per node; this machine has {found}.",
                            "Apply it where the GPUs are, or re-plan for this machine (--gpus N, or --gpu cpu).")
    cmd = torchrun_command(plan_path, out_dir, nproc=setup.count, nnodes=setup.nodes, node_rank=node_rank or 0,
                           master_addr=master_addr, master_port=master_port, extra=extra)
    rc = launch(cmd, console=console)
    report_path = out_dir / "report.json"
    if (node_rank or 0) != 0 or not report_path.is_file():
        return rc, None
    return rc, json.loads(report_path.read_text(encoding="utf-8"))


def apply_plan(plan: dict | PlanFile, *, out_dir: str | Path, max_steps: int | None = None,
               init: str | None = None, synthetic: tuple[int, int] | None = None, merge: bool = False,
               retry: bool = False, force: bool = False, console=None, epochs: float | None = None,
               node_rank: int | None = None, master_addr: str | None = None, master_port: int = 29500,
               launched: bool = False, resume: str | Path | None = None) -> int:
    """Train with `plan`, report predicted vs measured memory; exit status 0 (trained) or 1 (out of memory).

    Bad input (a non-empty --out without --force, a plan that needs a GPU here) raises UserError.
    `launched` marks a process started by the torchrun relaunch (the parent checked --out already).
    """
    from runner.noise import quiet_known_noise

    quiet_known_noise()  # before the first heavy import
    from runner.distributed import PARENT_ENV, under_torchrun
    from runner.oom import next_smaller, resumable

    use_expandable_segments()  # before torch touches CUDA; the torchrun relaunch inherits it
    console = _console(console)
    if not isinstance(plan, PlanFile):
        plan = PlanFile.from_dict(plan)
    out_dir = Path(out_dir)
    state = "new" if launched else check_out_dir(out_dir, force=force)  # before anything slow
    plan = effective_plan(plan, max_steps=max_steps, epochs=epochs, init=init, synthetic=synthetic)
    spec, setup = plan.model_spec(), plan.gpu_setup()
    if launched:
        resume_from = Path(resume) if resume else None
    else:
        resume_from = _resume_point(out_dir, state, plan.training.get("max_steps"))
        if resume_from:
            console.print(f"resuming from {resume_from}")
    out_dir.mkdir(parents=True, exist_ok=True)
    distributed = setup.world_size > 1 and not under_torchrun()
    quiet = launched and bool(os.environ.get(PARENT_ENV))  # our torchrun parent prints for every rank

    for attempt in range(1, MAX_ATTEMPTS + 1):
        if distributed:
            rc, report = _launch_distributed(plan, setup, out_dir=out_dir, merge=merge, resume=resume_from,
                                             node_rank=node_rank, master_addr=master_addr,
                                             master_port=master_port, console=console)
            if report is None:
                return rc
            from runner.report import render_report

            render_report(report, console)
            result = None
        else:
            if not launched or _rank() == 0:
                plan.save(out_dir / "plan.yaml")
            report, result = _attempt(plan, spec, setup, out_dir=out_dir, merge=merge, resume=resume_from,
                                      console=console)
            if report is None:  # ranks other than 0: rank 0 reports
                return 0 if result.status == "ok" else 1
        if report["status"] == "ok":
            if result is not None:
                _finish(report, out_dir, console)
            if not quiet:
                console.print(f"[green]done[/]: {out_dir}/report.json")
            return 0
        # out of memory: measured so far vs predicted, and the next smaller config
        from runner.train import pick_device

        device = pick_device(setup)
        seq_lens = _seq_lens(result, plan.config) if result is not None else None
        smaller = next_smaller(spec, plan.config, setup, device=device,
                               measured_bytes=report["measured"].get("peak_tensor_bytes"),
                               predicted_bytes=report["predicted"].get("peak_tensor_bytes"), attempt=attempt,
                               predict=_predict_peak(spec, setup, seq_lens) if seq_lens else None)
        if smaller is not None:
            plan.with_(config=smaller.train).save(out_dir / "plan.next.yaml")
        if result is not None:
            err, checkpoints = result.error, result.checkpoints
        else:  # torchrun's rank 0 wrote the report: its `oom` holds the stop, and the checkpoints it kept
            err, checkpoints = report.get("oom"), report.get("checkpoints") or []
        oom = _oom_info(report, err or {}, checkpoints, setup, smaller, out_dir)
        report["oom"] = oom
        if result is not None:
            _finish(report, out_dir, console)
        will_retry = retry and smaller is not None and attempt < MAX_ATTEMPTS and not launched
        if not quiet:
            print_oom(oom, out_dir, console, retrying=will_retry)
        if not will_retry:
            return 1
        console.print(f"[bold]retry {attempt}[/]: " + "; ".join(smaller.changes))
        shutil.copy(out_dir / "plan.yaml", out_dir / f"plan.oom-{attempt}.yaml")
        if not resumable(plan.config, smaller.train):
            _archive_checkpoints(out_dir, attempt)
        plan = plan.with_(config=smaller.train)
        resume_from = latest_checkpoint(out_dir)
    return 1


def _rank() -> int:
    return int(os.environ.get("RANK", 0))
