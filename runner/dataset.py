"""Training samples for `plan --apply`: the planner's own encoding of a dataset, or synthetic token ids.

Real datasets go through planner.data.encode_records, the same template, tokenizer, cutoff and
label masking the planner counted, so the lengths it predicted for are the lengths trained on.

    >>> samples, note = load_samples(plan, spec, synthetic=(64, 512))
    >>> collate = PadCollator(pad_id=0); batch = collate(samples[:2])
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from planner.errors import UserError
from planner.exports.plan_file import PlanFile
from planner.model.spec import ModelSpec

IGNORE_INDEX = -100  # torch.nn.CrossEntropyLoss ignore_index, as transformers' loss uses it


@dataclass(frozen=True)
class Sample:
    input_ids: list[int]
    labels: list[int]


def synthetic_samples(n: int, length: int, vocab_size: int, *, seed: int = 0) -> list[Sample]:
    """n rows of `length` uniformly random token ids; every token is a label."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ids = [rng.randrange(vocab_size) for _ in range(length)]
        rows.append(Sample(ids, list(ids)))
    return rows


def encoded_samples(plan: PlanFile, spec: ModelSpec) -> list[Sample]:
    """The plan's dataset through planner.data (template, tokenizer, cutoff_len, prompt masking)."""
    try:
        from planner.data import DataRequest, encode_records
    except ImportError as exc:  # pragma: no cover - planner.data ships with the planner
        raise UserError(f"--apply with a dataset needs planner.data ({exc}).") from None
    plan.check_data_paths()
    request = data_request(plan, DataRequest)
    rows = [Sample(list(s.input_ids), list(s.labels)) for s in encode_records(request, spec)]
    if not rows:
        raise UserError(f"{plan.where}: the dataset gave no training samples.",
                        "Check data.dataset and the template, or use --synthetic-data N:LEN.")
    return rows


def data_request(plan: PlanFile, request_cls: type) -> Any:
    """plan.data (the DataRequest's fields, as the planner wrote them) -> DataRequest, with the plan's cutoff."""
    import dataclasses

    raw = {k: v for k, v in plan.data.items() if k != "synthetic"}
    if dataclasses.is_dataclass(request_cls):
        names = {f.name for f in dataclasses.fields(request_cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise UserError(f"{plan.where}: data.{unknown[0]} is not a dataset setting.",
                            f"Known: {', '.join(sorted(names))}.")
        for key, value in list(raw.items()):
            if isinstance(value, list):
                raw[key] = tuple(value)
        if "cutoff_len" in names:
            raw["cutoff_len"] = plan.config.cutoff_len
        if "trainer" in names:  # the template the planned recipe renders (LLaMA-Factory's by default)
            raw.setdefault("trainer", plan.config.trainer)
    return request_cls(**raw)


def load_samples(plan: PlanFile, spec: ModelSpec, *, synthetic: tuple[int, int] | None = None,
                 seed: int = 0) -> tuple[list[Sample], str]:
    """(samples, a one-line description). synthetic overrides the plan's data."""
    synthetic = synthetic or plan.synthetic
    if synthetic:
        n, length = synthetic
        if length > plan.config.cutoff_len:
            length = plan.config.cutoff_len
        return synthetic_samples(n, length, spec.vocab_size, seed=seed), f"synthetic: {n} x {length} random tokens"
    if not plan.data:
        raise UserError(f"{plan.where}: the plan has no data to train on.",
                        "Plan with --data FILE, or pass --synthetic-data N:LEN (e.g. 64:512).")
    rows = encoded_samples(plan, spec)
    lens = sorted(len(r.input_ids) for r in rows)
    return rows, f"{len(rows)} samples, {lens[0]}-{lens[-1]} tokens (median {lens[len(lens) // 2]})"


def split_eval(rows: list[Sample], ratio: float, *, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Hold out `ratio` of the rows (at least one, when ratio > 0 and there are two or more) for eval loss."""
    if ratio <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    k = min(len(rows) - 1, max(1, round(len(rows) * ratio)))
    held = set(order[:k])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


class RowDataset:
    """A list of samples as the map-style dataset the Trainer's DataLoader reads."""

    def __init__(self, rows: list[Sample]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        r = self.rows[i]
        return {"input_ids": r.input_ids, "labels": r.labels}


class PadCollator:
    """Pad to the longest row of the batch, on the right; labels padded with -100, mask 0 on padding."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]):
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = longest - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids, dtype=torch.long),
                "attention_mask": torch.tensor(mask, dtype=torch.long),
                "labels": torch.tensor(labels, dtype=torch.long)}
