"""Click options of the auto-configurator, and the hand-off from parsed options to search/check/sweep.

`--out DIR`, `--epochs E` and `--force` are shared with `--apply` (planner.cli.apply defines them);
these options add only what the search needs:

    @search_options
    def cli(..., **params): ...
    request = request_from_options(params, model=...)   # planner.cli.request: request.search holds them
    if params["out"]: write_exports(plan, params["out"], force=params["force"], ...)
"""

from __future__ import annotations

from typing import Any

import click


def search_options(f):
    """Add the search options to a click command (help order as listed)."""
    options = [
        click.option("--target-batch", type=click.IntRange(min=1), metavar="N",
                     help="Samples per optimizer step (micro batch x accumulation x GPUs). Default: 16 for "
                          "LoRA/QLoRA (QLoRA paper), 32 for full; rounded up to a multiple of the GPU count."),
        click.option("--margin", type=click.FloatRange(0.0, 0.5, max_open=True), metavar="X",
                     help="Safety margin on the predicted peak, as a fraction of the GPU memory (default 0.05: "
                          "the memory model's error before calibration). Raise it if you hit OOM."),
        click.option("--check", "check", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Check an existing LLaMA-Factory or Axolotl YAML: does it fit on --gpu (or the GPUs "
                          "here), and what to change. Exit 0 when it fits, 1 when not."),
        click.option("--sweep", is_flag=True,
                     help="Plan the model on the common cards (RTX 3090/4090, L40S, A100 40/80, H100, H200) "
                          "x 1/2/4/8 GPUs: method, cutoff, batch, ZeRO and time for each."),
        click.option("--packing/--no-packing", default=False, show_default=True,
                     help="Concatenate samples into full rows (no padding; LLaMA-Factory `packing`)."),
        click.option("--group-by-length", is_flag=True,
                     help="Batch samples of similar length together (less padding than random batches)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def data_ref_from_params(params: dict[str, Any]) -> dict[str, Any] | None:
    """The data request (DataRequest field names) to write into plan.yaml and the exports."""
    ref: dict[str, Any] = {}
    for key in ("data", "dataset", "dataset_dir", "format", "template", "tokenizer"):
        value = params.get(key)
        if value not in (None, (), [], ""):
            ref[key] = list(value) if isinstance(value, (list, tuple)) else value
    return ref or None
