"""`plan --apply`: the click options, and the hand-off to the runner (imported only when applying).

    @apply_options
    def cli(..., **params): ...
    if apply_requested(params):
        sys.exit(run_apply(params, plan=PlanFile.from_values(spec, train, setup, data=...)))

Torch-free: `plan --help` and planning never import the runner.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from planner.errors import UserError

if TYPE_CHECKING:  # read when applying: `plan --help` does not load the plan-file code
    from planner.exports.plan_file import PlanFile

INITS = ("pretrained", "random")


def apply_options(f):
    """Add the --apply family of options to a click command (applied bottom-up: listed in help order)."""
    options = [
        click.option("--apply", "apply", is_flag=False, flag_value="", default=None, metavar="[PLAN.yaml]",
                     help="Train with the plan and report predicted vs measured memory. Without a file: "
                          "the plan just made; with one: re-apply a saved plan (OUT/plan.yaml)."),
        click.option("--out", type=click.Path(file_okay=False), metavar="DIR",
                     help="Planning: write plan.yaml and the LLaMA-Factory/Axolotl/DeepSpeed/transformers files "
                          "here. With --apply: the run's folder (adapter, checkpoints, report.json, loss.png; "
                          "default vramplan-out/<model>-<method>). Never overwritten without --force."),
        click.option("--max-steps", type=click.IntRange(min=1), metavar="N",
                     help="Train N optimizer steps and report: the one-minute answer to 'will it fit'."),
        click.option("--epochs", type=click.FloatRange(min=0, min_open=True), metavar="E",
                     help="Epochs to train (default: the plan's num_train_epochs, 3 without --data, 1-3 by "
                          "its size with it; --max-steps wins)."),
        click.option("--init", type=click.Choice(INITS), default=None,
                     help="pretrained (default, or what a re-applied plan used) or random: build the model "
                          "from its config with random weights, to measure without the weights."),
        click.option("--synthetic-data", metavar="N:LEN",
                     help="Train on N samples of LEN random token ids instead of a dataset."),
        click.option("--merge", is_flag=True, help="Also write the LoRA-merged model (OUT/merged)."),
        click.option("--retry", is_flag=True,
                     help="After an out-of-memory error, re-plan with a wider margin and try again."),
        click.option("--force", is_flag=True,
                     help="Write into a non-empty --out (resumes from its last checkpoint when unfinished)."),
        click.option("--node-rank", type=click.IntRange(min=0), metavar="R",
                     help="Several nodes: this node's rank (0 = master). Without it the per-node commands "
                          "are printed."),
        click.option("--master-addr", metavar="HOST", help="Several nodes: the master node's address."),
        click.option("--master-port", type=click.IntRange(1, 65535), default=29500, show_default=True,
                     help="Several nodes: the master node's port."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def apply_requested(params: dict[str, Any]) -> bool:
    return params.get("apply") is not None


def default_out_dir(plan: PlanFile) -> Path:
    name = str(plan.model.get("name") or "model").replace("/", "-")
    return Path("vramplan-out") / f"{name}-{plan.config.method}"


def resolve_plan(params: dict[str, Any], plan: PlanFile | None = None) -> PlanFile:
    """The plan to apply: the file given to --apply, else the one the planner just made."""
    path = params.get("apply")
    if path:
        from planner.exports.plan_file import PlanFile

        return PlanFile.load(path)
    if plan is None:
        raise UserError("--apply: there is no plan to apply.",
                        "Give --model (and --gpu/--data) to plan first, or --apply DIR/plan.yaml.")
    return plan


def apply_kwargs(params: dict[str, Any], plan: PlanFile, *, console=None) -> dict[str, Any]:
    """Keyword arguments of runner.apply.apply_plan from the CLI parameters."""
    from planner.exports.plan_file import parse_synthetic

    synthetic = params.get("synthetic_data")
    return {
        "out_dir": Path(params.get("out") or default_out_dir(plan)),
        "max_steps": params.get("max_steps"),
        "epochs": params.get("epochs"),
        "init": params.get("init"),
        "synthetic": parse_synthetic(synthetic) if synthetic else None,
        "merge": bool(params.get("merge")),
        "retry": bool(params.get("retry")),
        "force": bool(params.get("force")),
        "node_rank": params.get("node_rank"),
        "master_addr": params.get("master_addr"),
        "master_port": params.get("master_port") or 29500,
        "console": console,
    }


def run_apply(params: dict[str, Any], *, plan: PlanFile | None = None, console=None) -> int:
    """Apply the plan; returns the exit status (0 trained, 1 out of memory). Imports torch only here."""
    from planner.cli.out_dir import check_out_dir

    plan = resolve_plan(params, plan)
    kwargs = apply_kwargs(params, plan, console=console)
    check_out_dir(params.get("out"), default=kwargs["out_dir"])
    try:
        from runner.apply import apply_plan
    except ImportError as exc:
        raise UserError(f"--apply needs the training extra ({exc.name} is not installed).",
                        "Install it with: pip install 'vramplan[train]'") from None
    return apply_plan(plan, **kwargs)


def worker_main(argv: list[str] | None = None) -> None:
    """`python -m planner.cli.apply --plan PLAN.yaml --out DIR [...]`: the entry torchrun starts once per GPU
    (runner.distributed), usable by hand."""
    import sys

    from runner.apply import apply_plan

    @click.command(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option("--plan", "plan_path", required=True, type=click.Path(exists=True), help="plan.yaml to apply.")
    @click.option("--launched", is_flag=True, hidden=True)
    @click.option("--resume", hidden=True)
    @apply_options
    def cmd(plan_path, launched, resume, **params):
        from planner.exports.plan_file import PlanFile

        plan = PlanFile.load(plan_path)
        kwargs = apply_kwargs(params, plan)
        sys.exit(apply_plan(plan, **kwargs, launched=launched, resume=resume))

    try:
        cmd.main(args=argv, prog_name="python -m planner.cli.apply", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except UserError as exc:
        click.secho(f"error: {exc.message}", fg="red", err=True)
        if exc.hint:
            click.echo(exc.hint, err=True)
        sys.exit(2)


if __name__ == "__main__":
    worker_main()
