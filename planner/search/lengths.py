"""The dataset's length distribution as equal-mass bins, for padding and truncation arithmetic.

DataStats holds every sorted length (up to millions); the search asks the same few questions thousands
of times (mean kept length at a cutoff, expected longest sample of a batch), so the distribution is cut
once into K equal-probability bins, each represented by its middle sample. Errors are O(1/K).

    >>> prof = LengthProfile.from_lengths([100, 200, 300, 4000])
    >>> prof.mean_kept(1024), round(prof.expected_max(2, 1024))
    (400.0, 710)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

BINS = 512
# HF LengthGroupedSampler (transformers trainer_pt_utils.get_length_grouped_indices) sorts mega-batches
# of 50 x batch size by length before cutting them into batches.
MEGABATCH_MULT = 50
# LLaMA-Factory's packing fills each row greedily (data/processor/processor_utils.greedy_knapsack); the
# last row of each pack group is partly empty. Assumption: 1% of the packed tokens are padding.
PACKING_EFFICIENCY = 0.99


@dataclass(frozen=True)
class LengthProfile:
    """Sorted per-bin representative lengths (equal probability 1/len(values))."""

    values: tuple[int, ...]
    samples: int  # records in the whole dataset (DataStats.samples)
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_lengths(cls, lengths: Sequence[int], samples: int | None = None, *, bins: int = BINS,
                     presorted: bool = False) -> LengthProfile:
        n = len(lengths)
        if n == 0:
            raise ValueError("no lengths")
        ordered = lengths if presorted else sorted(lengths)
        if n <= bins:
            values = tuple(int(x) for x in ordered)
        else:
            values = tuple(int(ordered[min(n - 1, int((k + 0.5) * n / bins))]) for k in range(bins))
        return cls(values=values, samples=samples if samples is not None else n)

    @classmethod
    def from_stats(cls, data) -> LengthProfile:
        """From planner.data's DataStats (its `.lengths` are sorted already)."""
        return cls.from_lengths(data.lengths, samples=data.samples, presorted=True)

    def quantile(self, q: float) -> int:
        """Nearest-rank quantile of the binned distribution."""
        k = len(self.values)
        return self.values[min(k, max(1, math.ceil(q * k))) - 1]

    def mean_kept(self, cutoff: int) -> float:
        """Mean tokens per sample that survive truncation at `cutoff`."""
        key = ("mean", cutoff)
        if key not in self._cache:
            self._cache[key] = sum(min(v, cutoff) for v in self.values) / len(self.values)
        return self._cache[key]

    def expected_max(self, batch: int, cutoff: int) -> float:
        """E[longest of `batch` random samples], capped at cutoff: the padded row length of a batch.

        Order statistics over K equal-mass bins: P(max <= bin k) = ((k+1)/K)^b, so
        E[max] = sum_k v_k * (((k+1)/K)^b - (k/K)^b).
        """
        key = ("max", batch, cutoff)
        if key not in self._cache:
            k = len(self.values)
            total, prev = 0.0, 0.0
            for i, v in enumerate(self.values):
                cur = ((i + 1) / k) ** batch
                total += min(v, cutoff) * (cur - prev)
                prev = cur
            self._cache[key] = total
        return self._cache[key]

    def expected_max_sq(self, batch: int, cutoff: int) -> float:
        """E[longest^2] of a random batch (attention cost grows with the square of the row length)."""
        key = ("max2", batch, cutoff)
        if key not in self._cache:
            k = len(self.values)
            total, prev = 0.0, 0.0
            for i, v in enumerate(self.values):
                cur = ((i + 1) / k) ** batch
                total += min(v, cutoff) ** 2 * (cur - prev)
                prev = cur
            self._cache[key] = total
        return self._cache[key]

    def grouped_rows(self, batch: int, cutoff: int) -> tuple[float, float]:
        """(mean padded row length, mean squared row length) with length-grouped batches.

        A mega-batch of m = 50 b random samples is sorted and cut into b-sized batches; the i-th order
        statistic of m draws sits near the quantile i/(m+1), so batch j pads to Q((j+1) b / (m+1)).
        """
        key = ("group", batch, cutoff)
        if key not in self._cache:
            m = MEGABATCH_MULT * batch
            rows = [min(self.quantile((j + 1) * batch / (m + 1)), cutoff) for j in range(MEGABATCH_MULT)]
            self._cache[key] = (sum(rows) / len(rows), sum(r * r for r in rows) / len(rows))
        return self._cache[key]


_PROFILES: dict[int, tuple[object, LengthProfile]] = {}


def profile_of(data) -> LengthProfile | None:
    """LengthProfile for a DataStats (memoized per object), None without data or lengths."""
    if data is None or not len(getattr(data, "lengths", ()) or ()):
        return None
    hit = _PROFILES.get(id(data))
    if hit is not None and hit[0] is data:
        return hit[1]
    if len(_PROFILES) > 32:
        _PROFILES.clear()
    prof = LengthProfile.from_stats(data)
    _PROFILES[id(data)] = (data, prof)
    return prof
