"""Token counts of rendered texts: exactly with a tokenizer.json (the `tokenizers` library), or estimated.

A token is a label (response) when its first character lies inside an assistant span; the rest is prompt.
This is the one place that decides both the planner's counts and the runner's input_ids/labels.

    >>> counter = ExactCounter(Path("tokenizer.json"))
    >>> counter.count([("<|im_start|>user\\nhi<|im_end|>\\n...", [(30, 52)])])
    [(17, 6)]
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from planner.data.fastcount import FastCounter, supports
from planner.errors import UserError

IGNORE_INDEX = -100  # label of masked prompt tokens (torch CrossEntropyLoss ignore_index, used by HF)
Spans = list[tuple[int, int]]


class Counter(Protocol):
    exact: bool

    def count(self, items: list[tuple[str, Spans]]) -> list[tuple[int, int]]:
        """(total tokens, response tokens) per rendered text."""
        ...


class ExactCounter:
    """The real tokenizer, batch-encoded with the `tokenizers` library (no special tokens added: the
    chat template writes them, as transformers' apply_chat_template encodes with add_special_tokens=False)."""

    exact = True
    VERIFY_FIRST, VERIFY_EVERY = 128, 1024  # samples checked against the real tokenizer on the fast path

    def __init__(self, tokenizer_json: Path, *, fast: bool = True):
        self.path = Path(tokenizer_json)
        self.use_fast = fast
        self._tokenizer: Any = None
        self.fast: FastCounter | None = None
        self.note: str | None = None  # why the fast path was left, if it was
        self.seen = 0

    @property
    def tokenizer(self) -> Any:
        """The tokenizers.Tokenizer, loaded on first use (a cached plan never needs it)."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            try:
                tokenizer = Tokenizer.from_file(str(self.path))
                config = json.loads(self.path.read_text(encoding="utf-8"))
            except Exception as exc:  # tokenizers raises a bare Exception on bad files
                raise UserError(f"{self.path}: cannot load the tokenizer ({exc}).") from None
            tokenizer.no_truncation()
            tokenizer.no_padding()
            if self.use_fast and supports(config):
                self.fast = FastCounter(config, tokenizer.model)
            self._tokenizer = tokenizer
        return self._tokenizer

    def count(self, items: list[tuple[str, Spans]]) -> list[tuple[int, int]]:
        return self.count_samples(items, lambda item: item)

    def count_samples(self, samples: Sequence[Any], render: Callable[[Any], tuple[str, Spans]],
                      planned: Callable[[Any], tuple[int, int] | None] | None = None) -> list[tuple[int, int]]:
        """(total, response) per sample, rendered by `render`; `planned` may count a sample without rendering
        it (a chat-template skeleton's count plan). Samples due for verification are counted every way
        available and checked against the real tokenizer."""
        self.tokenizer  # noqa: B018 - loads it (and the fast path) on first use
        fast = self.fast
        if fast is None:
            return self.count_slow([render(s) for s in samples])
        results: list[tuple[int, int] | None] = []
        checks: dict[int, tuple[tuple[str, Spans], tuple[int, int] | None]] = {}  # i -> (item, planned count)
        for i, sample in enumerate(samples):
            n = self.seen + i
            due = n < self.VERIFY_FIRST or n % self.VERIFY_EVERY == 0
            result = planned(sample) if planned is not None else None
            if result is None or due:
                item = render(sample)
                got = fast.count_one(*item)
                if got is None or due:
                    checks[i] = (item, result)
                result = got
            results.append(result)
        self.seen += len(samples)
        if checks:
            slow = self.count_slow([item for item, _ in checks.values()])
            for (i, (_, also)), value in zip(checks.items(), slow, strict=True):
                wrong = next((r for r in (results[i], also) if r is not None and r != value), None)
                if wrong is not None:
                    self.fast = None  # never seen; the real tokenizer stays the reference
                    self.note = (f"fast counting disagreed with the tokenizer at a sample ({wrong} vs "
                                 f"{value}); counted with the tokenizer itself")
                    return self.count_slow([render(s) for s in samples])
                results[i] = value
        return results  # type: ignore[return-value]

    def count_slow(self, items: list[tuple[str, Spans]]) -> list[tuple[int, int]]:
        encodings = self.tokenizer.encode_batch([text for text, _ in items], add_special_tokens=False)
        return [(len(enc.ids), _response_tokens(enc, spans, len(text)))
                for enc, (text, spans) in zip(encodings, items, strict=True)]

    def encode(self, text: str, spans: Spans) -> tuple[list[int], list[int]]:
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        labels = [IGNORE_INDEX] * len(ids)
        for start, end in spans:
            a, b = _first_token_from(enc, start, len(text)), _first_token_from(enc, end, len(text))
            labels[a:b] = ids[a:b]
        return ids, labels


def _response_tokens(enc: Any, spans: Spans, text_len: int) -> int:
    if not spans:
        return 0
    if len(spans) == 1 and spans[0] == (0, text_len):
        return len(enc.ids)
    return sum(_first_token_from(enc, end, text_len) - _first_token_from(enc, start, text_len)
               for start, end in spans)


def _first_token_from(enc: Any, pos: int, text_len: int) -> int:
    """Index of the first token whose first character is at or after `pos`."""
    n = len(enc.ids)
    if pos >= text_len:
        return n
    if pos <= 0:
        return 0
    t = enc.char_to_token(pos)
    if t is None:  # a character no token covers (dropped by the normalizer): search the offsets
        return bisect_left([o[0] for o in enc.offsets], pos)
    # Several tokens can share one character (a CJK character split into byte tokens): step back to the
    # first of them, and forward past a token that began before pos.
    while t > 0 and enc.token_to_chars(t - 1)[0] >= pos:
        t -= 1
    if enc.token_to_chars(t)[0] < pos:
        t += 1
    return t
