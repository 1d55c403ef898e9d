"""The data half of a plan: read the dataset, render it with the chat template, count tokens, summarize.

    >>> stats = analyze(DataRequest(data=("demo",)), spec)
    >>> stats.cutoff_len, stats.truncation_at(stats.cutoff_len)
    (576, (0.018, 0.173))
    >>> for s in encode_records(DataRequest(data=("train.jsonl",), cutoff_len=2048), spec): ...
"""

from __future__ import annotations

import multiprocessing
import os
import time
from array import array
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from planner.data import cache
from planner.data.encode import ExactCounter
from planner.data.loaders import (
    Block,
    Item,
    Scan,
    Source,
    batches,
    block_items,
    empty_error,
    item_sample,
    iter_items,
    iter_samples,
    iter_units,
    resolve_sources,
)
from planner.data.pipeline import Prepared, prepare, template_identity
from planner.data.stats import DataStats, compute_stats
from planner.errors import UserError
from planner.model.spec import ModelSpec

BATCH = 1024  # samples per batch: per-call overhead is amortized, memory stays small
BLOCK_BYTES = 1 << 20  # JSON Lines / JSON array bytes handed to a worker at a time (~1,000 alpaca records)


@dataclass(frozen=True)
class DataRequest:
    """What the user asked about the data (from --data and friends)."""

    data: tuple[str, ...] = ()  # files, folders, globs, "demo", "path/dataset_info.json:NAME"
    dataset: tuple[str, ...] = ()  # entry names in dataset_dir/dataset_info.json
    dataset_dir: str | None = None
    format: str | None = None  # force alpaca|sharegpt|messages|text
    template: str | None = None  # built-in name, .jinja file, or "model"; None: the one the trainer renders
    trainer: str = "llamafactory"  # whose recipe trains (planner.trainers): decides the default template
    tokenizer: str | None = None  # folder or tokenizer.json
    percentile: float = 0.98
    sample: int | None = None  # tokenize a uniform random subset of this many records
    plot: str | None = None  # PNG path
    use_cache: bool = True
    cutoff_len: int | None = None  # encode_records truncates to this
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 1:
            raise UserError(f"--percentile {self.percentile}: must be in (0, 1], e.g. 0.98.")
        if self.sample is not None and self.sample < 1:
            raise UserError(f"--sample {self.sample}: must be a positive number of records.")
        if not self.data and not self.dataset:
            raise UserError("no data given.", "Use --data FILE (or `--data demo`), or --dataset NAME.")


@dataclass(frozen=True)
class EncodedSample:
    """One training example as the trainer receives it; labels are -100 on prompt tokens."""

    input_ids: list[int]
    labels: list[int]
    file: str
    line: int


def _sources(request: DataRequest) -> list[Source]:
    return resolve_sources(request.data, datasets=request.dataset, dataset_dir=request.dataset_dir,
                           format_data=request.format)


def encode_records(request: DataRequest, model: ModelSpec) -> Iterator[EncodedSample]:
    """Token ids and labels for training, through the same rendering and counting code as analyze()."""
    prep = prepare(model, tokenizer=request.tokenizer, template=request.template, trainer=request.trainer)
    if not isinstance(prep.counter, ExactCounter):
        raise UserError("training needs the real tokenizer, and none was found "
                        f"({prep.tokenizer.note}).", "Pass --tokenizer FOLDER or use a local model folder.")
    for sample, text, spans in prep.rendered(iter_samples(_sources(request), sample=request.sample,
                                                          seed=request.seed)):
        ids, labels = prep.counter.encode(text, spans)
        if request.cutoff_len:
            ids, labels = ids[:request.cutoff_len], labels[:request.cutoff_len]
        yield EncodedSample(ids, labels, sample.file, sample.line)


def analyze(request: DataRequest, model: ModelSpec, *, progress: bool = True) -> DataStats:
    """Token-length statistics of the requested data under the model's tokenizer and template."""
    sources = _sources(request)
    prep = prepare(model, tokenizer=request.tokenizer, template=request.template, trainer=request.trainer)
    key = _key(request, sources, prep) if request.use_cache else None
    hit = cache.load(key) if key else None
    if hit is not None:
        lengths, meta = hit
        return _finish(request, _stats(request, model, prep, sources, lengths, meta, cached=True))
    lengths = array("I")
    totals = {"prompt": 0, "response": 0}
    scan = Scan()
    bar = _LazyProgress(progress)
    size = sum(s.path.stat().st_size for s in sources)
    workers = _workers_for(size, request)
    if workers and not request.sample:  # the workers read JSON Lines and JSON arrays themselves
        counted = _in_workers(prep, iter_units(sources, batch=BATCH, block_bytes=BLOCK_BYTES), workers)
    else:
        units = batches(iter_items(sources, sample=request.sample, seed=request.seed, scan=scan,
                                      raw=workers > 0), BATCH)
        counted = _in_workers(prep, units, workers) if workers else (_work(prep, b) for b in units)
    try:
        for results in counted:
            for total, response in results:
                lengths.append(total)
                totals["response"] += response
                totals["prompt"] += total - response
            bar.update(len(lengths), max(scan.records, len(lengths)))
    finally:
        bar.stop()
    if not lengths:
        raise empty_error(sources)
    scan.records = max(scan.records, len(lengths))  # every record was tokenized unless --sample
    meta = {"samples": scan.records, "prompt": totals["prompt"], "response": totals["response"]}
    if key:
        cache.store(key, array("I", sorted(lengths)), meta)
    return _finish(request, _stats(request, model, prep, sources, lengths, meta, cached=False))


def _finish(request: DataRequest, stats: DataStats) -> DataStats:
    if request.plot:
        from planner.data.render import write_plot

        write_plot(stats, request.plot)
    return stats


def _work(prep: Prepared, batch: list[Item] | Block) -> list[tuple[int, int]]:
    """Read (a block), convert, render and count one batch: the whole per-sample pipeline."""
    items = block_items(batch) if isinstance(batch, Block) else batch
    return prep.count([item_sample(item) for item in items])


WORKER_MIN_BYTES = 16 << 20  # below this, starting processes costs more than it saves
_WORKER_PREP: Any = None


def _workers_for(size_bytes: int, request: DataRequest) -> int:
    """Processes to fork: one per core (at most 4), when the data is big enough and fork exists."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    work = size_bytes if request.sample is None else min(size_bytes, request.sample * 2048)
    return min(cores, 4) if work >= WORKER_MIN_BYTES else 0


def _worker(batch: list[Item] | Block) -> tuple[str, Any]:
    try:
        return "ok", _work(_WORKER_PREP, batch)
    except UserError as exc:  # sent back as values: the hint would not survive pickling
        return "error", (exc.message, exc.hint)


def _in_workers(prep: Prepared, units: Iterator[list[Item] | Block], workers: int) -> Iterator[list[tuple[int, int]]]:
    """Read (blocks of JSON files), parse, render and count in forked processes: the per-sample work is
    Python and spreads over the cores. Results come back in order."""
    global _WORKER_PREP
    _WORKER_PREP = prep  # inherited by the forks
    if isinstance(prep.counter, ExactCounter):  # load (and build the fast path) once, not once per fork
        prep.counter.tokenizer  # noqa: B018
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque[Any] = deque()

        def result() -> list[tuple[int, int]]:
            status, value = pending.popleft().result()
            if status == "error":
                raise UserError(*value)
            return value

        for unit in units:
            pending.append(pool.submit(_worker, unit))
            if len(pending) >= 2 * workers:  # a few batches in flight keep memory flat
                yield result()
        while pending:
            yield result()


def _stats(request: DataRequest, model: ModelSpec, prep: Prepared, sources: list[Source], lengths: array,
           meta: dict[str, Any], *, cached: bool) -> DataStats:
    files = prep.tokenizer
    if len(lengths) and max(lengths) == 0:
        # Nothing to train on, and every per-token figure downstream would divide by zero.
        where = files.location or files.source
        raise UserError(f"every sample is 0 tokens long with the tokenizer {where} and template "
                        f"{prep.template_name}: the tokenizer maps this text to nothing.",
                        "Check --tokenizer (a tokenizer.json whose vocabulary covers the text) and --template.")
    warnings = [prep.note] if prep.note else []
    error = None
    if not prep.counter.exact:
        error = getattr(prep.counter, "error", None)
        warnings.append(f"no tokenizer file found ({files.note}); token counts are an offline estimate. "
                        "Pass --tokenizer FOLDER for exact counts.")
    return compute_stats(
        lengths, samples=meta["samples"], prompt_tokens=meta["prompt"], response_tokens=meta["response"],
        percentile=request.percentile, context_len=model.max_position_embeddings,
        tokenizer_source=files.source, tokenizer_exact=prep.counter.exact, tokenizer_location=files.location,
        template=prep.template_name, estimate_error=error, warnings=warnings,
        files=tuple(str(s.path) for s in sources), cached=cached)


def _key(request: DataRequest, sources: list[Source], prep: Prepared) -> str:
    files = prep.tokenizer
    if files.tokenizer_json is not None:
        tokenizer_id: Any = cache.file_hash(files.tokenizer_json)
    else:
        counter: Any = prep.counter
        tokenizer_id = {"estimate": counter.family, "weights": counter.weights}
    return cache.cache_key({
        "files": [(cache.file_hash(s.path), repr(s.spec)) for s in sources],
        "tokenizer": tokenizer_id,
        "template": template_identity(prep),
        "sample": request.sample, "seed": request.seed,
    })


class _LazyProgress:
    """A rich progress line on stderr, shown only once the work has taken more than ~2 s."""

    def __init__(self, enabled: bool):
        self.enabled, self.start, self.progress, self.task = enabled, time.perf_counter(), None, None

    def update(self, tokenized: int, read: int) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            if time.perf_counter() - self.start < 2.0:
                return
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(SpinnerColumn(), TextColumn("tokenizing: {task.fields[done]:,} samples"),
                                     TextColumn("({task.fields[read]:,} read)"), TimeElapsedColumn(),
                                     console=Console(stderr=True), transient=True)
            self.progress.start()
            self.task = self.progress.add_task("data", total=None, done=0, read=0)
        self.progress.update(self.task, done=tokenized, read=read)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
