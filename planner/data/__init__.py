"""The dataset half of a plan: token lengths after the chat template, and the cutoff_len they suggest.

    >>> from planner.data import DataRequest, analyze, render_data
    >>> stats = analyze(DataRequest(data=("demo",)), spec)      # DataStats (frozen)
    >>> render_data(stats, console); stats.to_json()            # table + histogram; the `data` JSON object
    >>> for s in encode_records(DataRequest(data=("train.jsonl",), cutoff_len=2048), spec):
    ...     s.input_ids, s.labels                                # what training feeds (labels -100 on prompt)

Modules: records (file reading), formats (alpaca/sharegpt/messages/text), dataset_info, loaders (sources,
sampling), templates (chat templates, label spans), skeleton (render once per conversation shape),
tokenizer_files (the tokenizer chain), encode + fastcount (exact counting), estimate (no tokenizer),
stats, cache, analysis (the pipeline), render (output). Its flags live in planner.cli.data_options.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Read on first use (PEP 562): importing one submodule (formats, for the --format-data choices in
# `plan --help`) does not load the counting pipeline.
_EXPORTS = {"DataRequest": "analysis", "EncodedSample": "analysis", "analyze": "analysis",
            "encode_records": "analysis", "render_data": "render", "write_plot": "render", "DataStats": "stats"}
__all__ = ["DataRequest", "DataStats", "EncodedSample", "analyze", "encode_records", "render_data", "write_plot"]

if TYPE_CHECKING:
    from planner.data.analysis import DataRequest, EncodedSample, analyze, encode_records
    from planner.data.render import render_data, write_plot
    from planner.data.stats import DataStats


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"planner.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'planner.data' has no attribute {name!r}")
