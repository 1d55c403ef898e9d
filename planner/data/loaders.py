"""From --data / --dataset arguments to a stream of `Sample`s.

    >>> sources = resolve_sources(["train/*.jsonl", "data/dataset_info.json:alpaca_en_demo"])
    >>> for sample in iter_samples(sources): ...
"""

from __future__ import annotations

import glob
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from planner.data.dataset_info import load_dataset_info
from planner.data.formats import FORMATS, FormatSpec, Sample, Source, detect_format, to_sample
from planner.data.records import (
    SUFFIXES,
    array_blocks,
    is_json_lines,
    iter_block_elements,
    iter_block_lines,
    iter_raw_lines,
    iter_records,
    line_blocks,
    parse_json_line,
)
from planner.errors import UserError


def demo_path() -> Path:
    """The bundled bilingual demo dataset (`--data demo`)."""
    return Path(str(resources.files("profiles") / "demo" / "demo.jsonl"))


def resolve_sources(data: list[str] | tuple[str, ...], *, datasets: list[str] | tuple[str, ...] = (),
                    dataset_dir: str | None = None, format_data: str | None = None) -> list[Source]:
    """Expand files, globs, folders, `demo` and `dataset_info.json:NAME[,NAME]` into sources."""
    if format_data is not None and format_data not in FORMATS:
        raise UserError(f"--format-data {format_data!r} is not a known format.",
                        f"Use one of {', '.join(FORMATS)}.")
    sources: list[Source] = []
    for item in data:
        sources.extend(_resolve_one(item))
    names = [n.strip() for d in datasets for n in d.split(",") if n.strip()]
    if names:
        info = Path(dataset_dir or "data") / "dataset_info.json"
        sources.extend(load_dataset_info(info, names))
    elif dataset_dir:
        raise UserError("--dataset-dir was given without --dataset.", "Name the entries: --dataset NAME[,NAME].")
    if format_data:
        sources = [replace(s, spec=_forced(s.spec, format_data)) for s in sources]
    return sources


def _forced(spec: FormatSpec | None, fmt: str) -> FormatSpec:
    if spec is None or spec.format != fmt:
        return FormatSpec(fmt, columns=spec.columns if spec else {}, tags=spec.tags if spec else {})
    return spec


def _resolve_one(item: str) -> list[Source]:
    if item == "demo":
        return [Source(demo_path(), name="demo")]
    head, sep, names = item.rpartition(":")
    if sep and head.endswith(".json") and Path(head).name == "dataset_info.json":
        return load_dataset_info(Path(head), [n.strip() for n in names.split(",") if n.strip()])
    path = Path(item).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                       and p.name != "dataset_info.json")
        if not files:
            raise UserError(f"--data {item}: the folder holds no data files ({', '.join(SUFFIXES)}).")
        return [Source(p) for p in files]
    if any(ch in item for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"--data {item}: the pattern matches no file.")
        return [Source(p) for p in files]
    if not path.exists():
        hint = "Give a file, a folder, a glob, `demo`, or path/dataset_info.json:NAME."
        raise UserError(f"--data {item}: no such file or folder.", hint)
    if path.name == "dataset_info.json":
        raise UserError(f"--data {item}: name the entry to use, e.g. {item}:alpaca_en_demo.")
    return [Source(path)]


@dataclass
class Scan:
    """What a pass over the sources saw: records read (all of them, also when sampling)."""

    records: int = 0


class Item(NamedTuple):
    """One record before conversion: raw JSON Lines bytes (parsed by whoever converts) or a parsed record."""

    file: str
    line: int
    payload: Any
    spec: FormatSpec


class Block(NamedTuple):
    """Whole records of a file, by byte range, for another process to read and convert: lines of JSON
    Lines, or elements of a JSON array."""

    file: str
    offset: int
    length: int
    line: int  # number of the first line
    spec: FormatSpec
    array: bool = False
    after_comma: bool = False  # an array block that must hold a record (a ',' came before it)


def block_items(block: Block) -> Iterator[Item]:
    if block.array:
        for line, record in iter_block_elements(block.file, block.offset, block.length, block.line,
                                                block.after_comma):
            yield Item(block.file, line, record, block.spec)
        return
    for line, raw in iter_block_lines(block.file, block.offset, block.length, block.line):
        yield Item(block.file, line, raw, block.spec)


def iter_units(sources: list[Source], *, batch: int, block_bytes: int = 1 << 20) -> Iterator[Block | list[Item]]:
    """The whole dataset as units of work for other processes: JSON Lines and JSON array files as blocks of
    whole records (this process only finds where records end), other files as batches of records read here.
    Each file's format is resolved from its first record. An empty dataset yields nothing (the caller says
    so)."""
    for source in sources:
        suffix = source.path.suffix.lower()
        if suffix in (".json", ".jsonl"):
            lines = is_json_lines(source.path)
            spec = source.spec
            if spec is None:
                first = next(iter_raw_lines(source.path) if lines else iter_records(source.path), None)
                if first is None:
                    continue
                record = parse_json_line(source.path, *first) if lines else first[1]
                spec = _spec_for(record, source, first[0])
            if lines:
                for offset, length, line in line_blocks(source.path, size=block_bytes):
                    yield Block(str(source.path), offset, length, line, spec)
            else:
                for offset, length, line, after_comma in array_blocks(source.path, size=block_bytes):
                    yield Block(str(source.path), offset, length, line, spec, True, after_comma)
            continue
        yield from batches(_items(source, True), batch)


def batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    """Items in lists of `size` (the last one shorter)."""
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def item_sample(item: Item) -> Sample:
    record = parse_json_line(item.file, item.line, item.payload) if isinstance(item.payload, bytes) \
        else item.payload
    return to_sample(record, item.spec, item.file, item.line)


def iter_samples(sources: list[Source], *, sample: int | None = None, seed: int = 0,
                 scan: Scan | None = None) -> Iterator[Sample]:
    """All samples in file order; with `sample`, a uniform random subset of that size (reservoir)."""
    return map(item_sample, iter_items(sources, sample=sample, seed=seed, scan=scan))


def iter_items(sources: list[Source], *, sample: int | None = None, seed: int = 0, scan: Scan | None = None,
               raw: bool = False) -> Iterator[Item]:
    """Records in file order (or a reservoir sample of them), with each file's format resolved from its
    first record. With raw, JSON Lines records stay unparsed bytes (so another process can parse them)."""
    scan = scan if scan is not None else Scan()
    if not sample:
        for source in sources:
            for item in _items(source, raw):
                scan.records += 1
                yield item
        if scan.records == 0:
            raise empty_error(sources)
        return
    rng = random.Random(seed)
    reservoir: list[tuple[int, Item]] = []
    for source in sources:
        for item in _items(source, True):
            n = scan.records
            scan.records += 1
            if n < sample:
                reservoir.append((n, item))
            else:
                j = rng.randrange(n + 1)
                if j < sample:
                    reservoir[j] = (n, item)
    if scan.records == 0:
        raise empty_error(sources)
    reservoir.sort(key=lambda t: t[0])
    for _, item in reservoir:
        yield item


def _items(source: Source, raw: bool) -> Iterator[Item]:
    file = str(source.path)
    spec = source.spec
    stream = iter_raw_lines(source.path) if raw and source.path.suffix.lower() == ".jsonl" \
        else iter_records(source.path)
    for line, payload in stream:
        if spec is None:
            record = parse_json_line(source.path, line, payload) if isinstance(payload, bytes) else payload
            spec = _spec_for(record, source, line)
        yield Item(file, line, payload, spec)


def _spec_for(record: object, source: Source, line: int) -> FormatSpec:
    return detect_format(record, f"{source.path}:{line}")


def empty_error(sources: list[Source]) -> UserError:
    names = ", ".join(str(s.path) for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
    return UserError(f"the dataset is empty: no records in {names}.",
                     "Check the file (a JSON array, JSON Lines, CSV or parquet with at least one record).")
