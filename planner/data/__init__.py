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

from planner.data.analysis import DataRequest, EncodedSample, analyze, encode_records
from planner.data.render import render_data, write_plot
from planner.data.stats import DataStats

__all__ = ["DataRequest", "DataStats", "EncodedSample", "analyze", "encode_records", "render_data", "write_plot"]
