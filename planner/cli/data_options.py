"""The data flags of `plan`, and the DataRequest they make.

    @click.command()
    @data_options
    def plan(**opts): request = data_request_from_options(opts)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from planner.data.formats import FORMATS
from planner.data.templates import BUILTIN
from planner.errors import UserError

if TYPE_CHECKING:
    from planner.data.analysis import DataRequest

_OPTIONS = [
    click.option("--data", "data", multiple=True, metavar="PATH",
                 help="Dataset file, folder or glob (.json/.jsonl/.csv/.parquet/.txt), `demo`, or "
                      "path/dataset_info.json:NAME[,NAME]. Repeat for several."),
    click.option("--dataset", "dataset", multiple=True, metavar="NAME[,NAME]",
                 help="Entries of DIR/dataset_info.json (LLaMA-Factory registry); see --dataset-dir."),
    click.option("--dataset-dir", "dataset_dir", metavar="DIR", help="Folder holding dataset_info.json (default: data)."),
    click.option("--format-data", "format_data", type=click.Choice(FORMATS),
                 help="Force the record format instead of detecting it."),
    click.option("--template", "template", metavar="NAME|FILE",
                 help=f"Chat template: `model` (the tokenizer's own, default), a built-in "
                      f"({', '.join(BUILTIN)}) or a .jinja file."),
    click.option("--tokenizer", "tokenizer", metavar="PATH",
                 help="Folder with tokenizer.json (or the file); default: the model folder, then the hub "
                      "cache, then an offline estimate."),
    click.option("--percentile", "percentile", type=float, metavar="P",
                 help="Length percentile of --data the cutoff_len covers (default 0.98); 0.95-0.99 trades "
                      "truncation for memory."),
    click.option("--sample", "sample", type=int, metavar="N",
                 help="Tokenize a random N records only (percentiles get 95% intervals); for huge data."),
    click.option("--plot", "plot", metavar="FILE.png", help="Write a histogram + CDF of lengths as PNG."),
    click.option("--no-cache", "no_cache", is_flag=True, help="Recount instead of reusing cached lengths."),
]


def data_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the data flags to a click command."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def data_request_from_options(opts: dict[str, Any]) -> DataRequest | None:
    """The DataRequest of the parsed flags; None when no data was given (the tokenizer chain reads the
    model in planner.data.analyze)."""
    data = tuple(opts.get("data") or ())
    dataset = tuple(opts.get("dataset") or ())
    if not data and not dataset:
        # These read the data's token lengths: without data they would be ignored, silently.
        for flag, key in (("--percentile", "percentile"), ("--sample", "sample"), ("--plot", "plot")):
            if opts.get(key) is not None:
                raise UserError(f"{flag} needs --data: it applies to your dataset's token lengths.",
                                f"Give --data FILE (or --data demo, or --dataset NAME), or drop {flag}.")
        return None
    percentile = opts.get("percentile")
    from planner.data.analysis import DataRequest

    return DataRequest(
        data=data, dataset=dataset, dataset_dir=opts.get("dataset_dir"), format=opts.get("format_data"),
        template=opts.get("template"), tokenizer=opts.get("tokenizer"), trainer=_trainer(opts),
        percentile=0.98 if percentile is None else float(percentile), sample=opts.get("sample"),
        plot=opts.get("plot"), use_cache=not opts.get("no_cache", False))


def _trainer(opts: dict[str, Any]) -> str:
    from planner.trainers import DEFAULT_TRAINER, recipe

    return recipe(str(opts["trainer"])).name if opts.get("trainer") else DEFAULT_TRAINER
