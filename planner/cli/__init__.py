"""The `plan` command line. Resolve (model, GPUs, data) -> compute -> render; nothing heavy at import.

    plan --model Qwen2.5-7B --gpu RTX4090
    plan --model Qwen2.5-7B --data demo --format json
    plan models | plan gpus
"""

from __future__ import annotations

import os
import sys

import click

from planner import __version__
from planner.cli.apply import apply_options, apply_requested
from planner.cli.calibration import calibrate_cmd
from planner.cli.data_options import data_options
from planner.cli.memory_options import memory_options
from planner.cli.search_options import search_options
from planner.errors import Infeasible, UserError

FORMATS = ("table", "json", "yaml")


def _common(f):
    """Options shared by every `plan` invocation."""
    f = click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                     help="table for people; json prints exactly one object on stdout (logs on stderr).")(f)
    f = click.option("--debug", is_flag=True, help="Show tracebacks for errors.")(f)
    return f


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "-m", metavar="NAME|HUB_ID|DIR",
              help="Catalog name (Qwen2.5-7B), hub id (Qwen/Qwen2.5-7B-Instruct) or a model folder.")
@click.option("--gpu", metavar="CARD|SIZE|cpu",
              help="Plan for this card (H100, RTX4090, A100-80G), a size (24GB) or the CPU. "
                   "Default: the GPUs on this machine, else RTX4090.")
@click.option("--gpus", type=int, metavar="N", help="GPUs per node (default: all found, else 1).")
@click.option("--nodes", type=int, default=1, show_default=True, metavar="M", help="Number of nodes.")
@click.option("--host-mem", "host_mem", metavar="SIZE",
              help="Host RAM per node (512G, 2TB) for ZeRO offload and the GPU processes. Default: this "
                   "machine's RAM when planning for its GPUs, else a stated default for the card class.")
@click.option("--calibration", metavar="FILE",
              help="Device calibration to plan with (a `plan calibrate --from-log` output). Default: the one "
                   "for this card and software stack ($VRAMPLAN_HOME/calibration, then profiles/calibration).")
@click.option("--offline", is_flag=True, help="Never touch the network (same as HF_HUB_OFFLINE=1).")
@click.option("--trust-remote-code", is_flag=True,
              help="Run the model folder's own Python code to build a model_type transformers does not know "
                   "(off by default; only for code you trust).")
@data_options
@memory_options
@click.option("--fixed", is_flag=True,
              help="Evaluate exactly the configuration given by the flags above (defaults for the rest): "
                   "no search.")
@click.option("--simulate", is_flag=True,
              help="Also trace the training step with fake tensors (architecture-exact activations, no GPU; "
                   "needs the [train] extra).")
@search_options
@apply_options
@_common
@click.version_option(__version__, prog_name="vramplan")
@click.pass_context
def cli(ctx, model, gpu, gpus, nodes, offline, fmt, debug, **options):
    """Plan LLM fine-tuning: will it fit, which settings, how long.

    \b
    plan --model Qwen2.5-7B --gpu RTX4090               the recommended config for a card
    plan --model Qwen2.5-7B --data my.json              ... fitted to your data's token lengths
    plan --model Qwen2.5-7B --method lora --cutoff 4096 --fixed   memory of one exact config
    plan --model Qwen2.5-7B --data my.json --out run/   + LLaMA-Factory/Axolotl/DeepSpeed files
    plan --model ./my-model --data my.json --apply      train with the plan, predicted vs measured
    plan --check train.yaml                             does an existing config fit?
    plan models | plan gpus | plan calibrate            catalogs; refit from logged runs

    \b
    Exit status:
      0  a recommended (or --fixed / --check) config fits every budget: the device
         peak within the safety margin, and host RAM per node
      1  nothing fits (the closest config and the smallest changes are printed),
         or the --fixed / --check config does not fit (margin included)
      2  bad input (a flag, a file); 3 internal error; 130 interrupted
    """
    if ctx.invoked_subcommand is not None:
        return
    import runner  # noqa: F401 - hands the planner its torch side (generic path); costs no torch
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    options = {**options, "fmt": fmt}
    if options.get("check"):
        _check(options["check"], gpu=gpu, gpus=gpus, nodes=nodes, options=options, fmt=fmt)
        return
    if options.get("apply") and not model:  # re-apply a saved plan
        if fmt != "table":
            _apply_document(None, options, fmt)
        from planner.cli.apply import run_apply

        sys.exit(run_apply(options))
    if not model:
        raise UserError("--model is required.", "Example: plan --model Qwen2.5-7B --gpu RTX4090")
    from planner.cli.render import emit
    from planner.cli.request import request_from_options
    from planner.pipeline import run_plan

    request = request_from_options(options, model=model, gpu=gpu, gpus=gpus, nodes=nodes)
    # A folder that cannot be written is found before the work; the plan is still shown, then exit 2.
    out_problem = _out_problem(options)
    report = run_plan(request)
    if options.get("simulate"):
        from planner.cli.simulate import simulate_stage

        simulate_stage(report.model, report)
    if out_problem is None and options.get("out") and report.plan is not None and not apply_requested(options):
        try:
            _export(report, options)
        except UserError as exc:
            out_problem = exc
    if apply_requested(options) and report.exit_code == 0 and out_problem is None and fmt != "table":
        _apply_document(report, options, fmt)  # one document: the plan and the run's report
    emit(report, fmt)
    if out_problem is not None:
        raise out_problem
    if apply_requested(options) and report.exit_code == 0:
        _apply(report, options)
    sys.exit(report.exit_code)


def _out_problem(options) -> UserError | None:
    """The --out folder's problem (or, with --apply, the default run folder's), or None."""
    from planner.cli.out_dir import check_out_dir

    out = options.get("out")
    if not out and not apply_requested(options):
        return None
    try:
        check_out_dir(out, default="vramplan-out")
    except UserError as exc:
        return exc
    return None


def _check(path, *, gpu, gpus, nodes, options, fmt):
    from planner.cli.render import dump, stdout_console
    from planner.hardware.calibration_use import choose_calibration
    from planner.hardware.gpus import resolve_setup
    from planner.search.check import check_config

    setup = resolve_setup(gpu, gpus=gpus, nodes=nodes, host_mem=options.get("host_mem"))
    choice = choose_calibration(setup.gpu, explicit=options.get("calibration"))
    for warning in choice.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    margin = choice.margin if options.get("margin") is None else options["margin"]
    result = check_config(path, setup, margin=margin, estimator=choice.estimator())
    if fmt == "table":
        result.render(stdout_console())
    else:
        dump(result.to_json(), fmt)
    sys.exit(result.exit_code)


def _export(report, options) -> None:
    from planner.cli.search_options import data_ref_from_params
    from planner.exports.writer import write_exports

    written = write_exports(report.plan, options["out"], model_ref=None,
                            data_ref=data_ref_from_params(options), force=bool(options.get("force")))
    report.sections["exports"] = {"out": str(options["out"]), "files": sorted(map(str, written))}
    report.notes.append(f"wrote {len(written)} files to {options['out']} (plan.yaml, llamafactory.yaml, ...)")


def _plan_file(report, options):
    from planner.cli.search_options import data_ref_from_params
    from planner.exports.plan_file import PlanFile
    from planner.exports.writer import training_of

    return PlanFile.from_values(report.model, report.train, report.setup, data=data_ref_from_params(options),
                                training=training_of(report.plan) if report.plan is not None else None,
                                predicted=report.plan.memory.to_json() if report.plan is not None else None)


def _apply(report, options) -> None:
    from planner.cli.apply import run_apply

    sys.exit(run_apply(options, plan=_plan_file(report, options)))


def _apply_document(report, options, fmt: str) -> None:
    """--apply with --format json|yaml: train with every log, table and third-party print on stderr, then
    write one object on stdout: the plan (when one was made here) with the run's report under "run"."""
    import json

    from planner.cli.apply import apply_kwargs, resolve_plan, run_apply
    from planner.cli.render import dump, emit, stdout_console, stdout_to_stderr

    plan = _plan_file(report, options) if report is not None else None
    try:
        with stdout_to_stderr():
            rc = run_apply(options, plan=plan, console=stdout_console(stderr=True))
    except UserError:
        if report is not None:
            emit(report, fmt)  # the plan is not lost; the error follows on stderr
        raise
    out_dir = apply_kwargs(options, resolve_plan(options, plan))["out_dir"]
    path = out_dir / "report.json"
    run = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"status": "no report written"}
    run["out"] = str(out_dir)
    if report is None:
        dump({"run": run}, fmt)
    else:
        report.sections["run"] = run
        emit(report, fmt)
    sys.exit(rc)


@cli.command("models")
@_common
def models_cmd(fmt, debug):
    """List the model catalog (profiles/models)."""
    from planner.cli.render import emit_models

    emit_models(fmt)


@cli.command("gpus")
@_common
def gpus_cmd(fmt, debug):
    """List the GPU catalog (profiles/gpus.yaml) and the cards on this machine."""
    from planner.cli.render import emit_gpus

    emit_gpus(fmt)


cli.add_command(calibrate_cmd)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors -> one message and exit 2; no traceback unless --debug."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if debug:  # the runner (and its torchrun children) then keep third-party warnings
        os.environ["VRAMPLAN_DEBUG"] = "1"
    try:
        cli.main(args=argv, prog_name="plan", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:  # usage errors name the flag already
        exc.show()
        sys.exit(2)
    except UserError as exc:
        if debug:
            raise
        click.secho(f"error: {exc.message}", fg="red", err=True)
        if exc.hint:
            click.echo(exc.hint, err=True)
        sys.exit(2)
    except Infeasible as exc:
        if debug:
            raise
        click.echo(exc.message, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        click.secho(f"internal error: {type(exc).__name__}: {exc}", fg="red", err=True)
        click.echo("This is a bug in vramplan; rerun with --debug for the traceback and report it.", err=True)
        sys.exit(3)
