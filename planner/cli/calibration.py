"""`plan calibrate`: refine this machine's device calibration from the runs `plan --apply` logged.

    plan calibrate --from-log ~/.local/share/vramplan/runs.jsonl
    plan calibrate                      # uses the default run log

Measuring a card from scratch needs torch and a GPU: `python -m benchmarks.calibrate` (it writes
profiles/calibration/<gpu>-<stack>.json); this command only refits from logged runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from planner.units import GIB, gib


@click.command("calibrate")
@click.option("--from-log", "log_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="Run log of `plan --apply` (default: $VRAMPLAN_HOME/runs.jsonl).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Where to write the calibration (default: $VRAMPLAN_HOME/calibration/<gpu>-<stack>.json).")
@click.option("--format", "fmt", type=click.Choice(("table", "json")), default="table", show_default=True,
              help="json prints the calibration file's fitted constants as one object.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def calibrate_cmd(log_path, out_path, fmt, debug):
    """Fit CUDA context, workspaces and allocator slack to the runs logged on this machine."""
    from planner.hardware.calibration import user_calibration_dir
    from planner.hardware.calibration_fit import calibrate_from_log

    if log_path is None:
        from runner.runlog import runlog_path  # torch-free module

        log_path = runlog_path()
    cal = calibrate_from_log(log_path)
    out = out_path or user_calibration_dir() / f"{cal.slug()}.json"
    cal.write(out)
    if fmt == "json":
        click.echo(json.dumps({"path": str(out), "gpu": cal.gpu, "stack": cal.stack, "fitted": cal.fitted,
                               "fit_quality": cal.fit_quality}, sort_keys=True))
        return
    f, q = cal.fitted, cal.fit_quality
    click.echo(f"calibration for {cal.gpu_name} from {q.get('n', 0)} measurements -> {out}")
    click.echo(f"  CUDA context        {f['cuda_context_bytes'] / GIB:7.2f} GiB")
    click.echo(f"  cuBLAS workspace    {f['cublas_workspace_bytes'] / GIB:7.2f} GiB")
    click.echo(f"  kernel temporaries  {f['kernel_temp_bytes_per_token_hidden']:7.2f} B per token x hidden")
    click.echo(f"  allocator slack     {f['allocator_slack_ratio']:7.2%} of allocated + "
               f"{gib(f['allocator_slack_bytes'])}")
    click.echo(f"  fit: median |error| {q.get('median_abs_error', 0):.1%}, max {q.get('max_abs_error', 0):.1%}, "
               f"{q.get('under_predicted', 0)} under-predicted")
