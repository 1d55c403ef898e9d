"""A symbolic allocation tape: the live bytes of one training step, op by op, as `Lin` values.

The recipes (planner.memory.recipes) replay what transformers' modeling code and PyTorch autograd
allocate and free, with reference counts as Python and autograd keep them: a tensor lives while a local
variable or a saved-for-backward slot holds it. The peak of a phase is the largest running total, not a
sum of parts. Recording happens once per configuration; the candidate peaks (`pruned`) are evaluated for
a batch shape by planner.memory.estimate.

    >>> tape = Tape()
    >>> s = tape.new("scores", Lin(tok_s=4.0)); tape.drop(s)
    >>> max(c.tok_s for c in tape.pruned())
    4.0
"""

from __future__ import annotations

from planner.memory.terms import ZERO, Lin


class Tape:
    """Running total of live bytes; named tensors with reference counts; candidate peaks."""

    __slots__ = ("cur", "size", "refs", "candidates", "_n", "log", "cache", "cache_leaf")

    def __init__(self, start: Lin = ZERO, log: list | None = None):
        self.log = log  # (event, total) pairs when debugging a recipe
        self.cache: list[str] = []  # tensors an autocast region caches until it exits
        self.cache_leaf: str | None = None  # an input leaf the autograd graph keeps (head.embedding_fwd)
        self.cur = start
        self.size: dict[str, Lin] = {}
        self.refs: dict[str, int] = {}
        self.candidates: list[Lin] = [start]
        self._n = 0

    def new(self, name: str, size: Lin) -> str:
        """Allocate a tensor held by one reference; returns its (unique) name."""
        self._n += 1
        key = f"{name}#{self._n}"
        self.size[key] = size
        self.refs[key] = 1
        self.cur = self.cur + size
        self.candidates.append(self.cur)
        if self.log is not None:
            self.log.append(("+" + key, self.cur))
        return key

    def hold(self, *keys: str | None) -> None:
        """One more reference (saved for backward, stored by a module, kept by checkpointing)."""
        for key in keys:
            if key is not None:
                self.refs[key] += 1

    def drop(self, *keys: str | None) -> None:
        """Release one reference each; a tensor is freed when its last reference goes."""
        for key in keys:
            if key is None or key not in self.refs:
                continue
            self.refs[key] -= 1
            if self.refs[key] == 0:
                self.cur = self.cur - self.size.pop(key)
                del self.refs[key]
                if self.log is not None:
                    self.log.append(("-" + key, self.cur))

    def clear_cache(self) -> None:
        """Leaving an autocast region drops its cached casts."""
        keys, self.cache = self.cache, []
        self.drop(*keys)

    def bulk(self, size: Lin) -> None:
        """Bytes not tracked by name, e.g. what the identical middle layers save (negative to release)."""
        self.cur = self.cur + size
        self.candidates.append(self.cur)

    def pruned(self) -> tuple[Lin, ...]:
        """Candidates that some batch shape can make the largest (dominated ones dropped)."""
        out: list[Lin] = []
        for c in sorted(set(self.candidates), key=lambda x: (-x.tok, -x.tok_s, -x.const, -x.seq)):
            if not any(o.tok >= c.tok and o.tok_s >= c.tok_s and o.const >= c.const and o.seq >= c.seq
                       for o in out):
                out.append(c)
        return tuple(out)

    def reset_candidates(self) -> None:
        """Start a new phase: only the current total is a candidate."""
        self.candidates = [self.cur]
