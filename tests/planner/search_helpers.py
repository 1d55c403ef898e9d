"""Helpers for the search and export tests (catalog setups, synthetic length distributions)."""

from __future__ import annotations

import random

from planner.hardware.gpu_spec import GpuSetup
from planner.hardware.gpus import parse_gpu
from planner.model.catalog import find_model


def estimator():
    from planner.memory import estimate_memory

    return estimate_memory


def spec(name: str):
    return find_model(name).spec


def setup(card: str, count: int = 1, nodes: int = 1) -> GpuSetup:
    return GpuSetup(parse_gpu(card), count=count, nodes=nodes)


def lengths(n: int = 5000, mu: float = 6.0, sigma: float = 0.8, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [max(8, int(rng.lognormvariate(mu, sigma))) for _ in range(n)]


def make_data(n: int = 5000, mu: float = 6.0, sigma: float = 0.8, percentile: float = 0.98, context: int = 32768):
    from planner.data.stats import compute_stats

    lens = lengths(n, mu, sigma)
    total = sum(lens)
    return compute_stats(lens, samples=n, prompt_tokens=total // 3, response_tokens=total - total // 3,
                         percentile=percentile, context_len=context, tokenizer_source="test", tokenizer_exact=True)

