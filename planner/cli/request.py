"""Parsed `plan` flags -> one typed PlanRequest (planner.request). Every setting the flags pin is decided here,
once; the pipeline and the domain packages read typed values only.

    >>> request_from_options({"cutoff": 4096, "fixed": True}, model="Qwen2.5-7B").pinned
    {'cutoff_len': 4096}
"""

from __future__ import annotations

from typing import Any

from planner.cli.data_options import data_request_from_options
from planner.cli.memory_options import pinned_from_options
from planner.exports.plan_file import parse_synthetic
from planner.request import PlanRequest, SearchOptions


def search_options_of(options: dict[str, Any]) -> SearchOptions:
    return SearchOptions(
        target_batch=options.get("target_batch"),
        margin=None if options.get("margin") is None else float(options["margin"]),
        epochs=options.get("epochs"),
        packing=bool(options.get("packing")),
        group_by_length=bool(options.get("group_by_length")),
    )


def request_from_options(options: dict[str, Any], *, model: str, gpu: str | None = None,
                         gpus: int | None = None, nodes: int = 1) -> PlanRequest:
    pinned = pinned_from_options(options)
    if options.get("synthetic_data") and "cutoff_len" not in pinned:
        # --synthetic-data N:LEN trains rows of LEN tokens: plan for exactly that length.
        pinned["cutoff_len"] = parse_synthetic(options["synthetic_data"])[1]
    return PlanRequest(
        model=model, gpu=gpu, gpus=gpus, nodes=nodes, host_mem=options.get("host_mem"),
        calibration=options.get("calibration"), trust_remote_code=bool(options.get("trust_remote_code")),
        pins=tuple(pinned.items()), data=data_request_from_options(options),
        fixed=bool(options.get("fixed")), sweep=bool(options.get("sweep")),
        search=search_options_of(options), progress=options.get("fmt") == "table",
    )
