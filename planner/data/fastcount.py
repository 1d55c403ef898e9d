"""Exact token counts at dataset scale: the tokenizer's own pipeline, memoized per word.

A byte-level BPE tokenizer (GPT-2 style: Qwen2/2.5/3, Llama 3) splits text into pieces with a regex
and merges each piece alone, so a piece's token count never depends on its neighbours. A space that
follows a non-space always starts a new piece (no branch of the known patterns runs a non-space into a
space), so "word" = text between such spaces is a unit as well, and its count can be memoized: a
dataset of millions of words has only ~10^5 distinct ones. Words are split with the full regex on
first sight (memoized per piece).

Only tokenizer.json files whose normalizer, pre-tokenizer and model match the known layout use this
path; `FastCounter.supports` says which. The caller checks it against the real tokenizer on a sample.

    >>> counter = FastCounter(tokenizer_json_dict, model=Tokenizer.from_file(path).model)
    >>> counter.count([(text, spans)])
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache
from itertools import islice
from typing import Any

# Split patterns of the tokenizers this path knows (verbatim from their tokenizer.json).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
KNOWN_PATTERNS = (QWEN2_PATTERN, LLAMA3_PATTERN, GPT2_PATTERN)
# Unicode White_Space (what Oniguruma's \s matches); Python's \s also takes U+001C..U+001F.
_WHITE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# A piece holds a space other than as its first character only inside a whitespace run: where whitespace
# precedes a space, words cannot be counted apart.
_UNCLEAN = re.compile(f"[{_WHITE}] ")


_LAST_ASSIGNED_LN = 0x3FFFF  # no letter or number lies above plane 3 (checked by the tests)


@lru_cache(maxsize=2)
def _class(prefix: str) -> str:
    """A regex character-class body of the code points of Unicode category L* or N*: str.isalpha() is
    exactly L*, and isnumeric() minus isalpha() exactly N* (Python's unicodedata)."""
    chars = "".join(map(chr, range(_LAST_ASSIGNED_LN + 1)))
    alpha = "".join(filter(str.isalpha, chars))
    members = alpha if prefix == "L" else "".join(c for c in filter(str.isnumeric, chars) if not c.isalpha())
    ranges: list[list[int]] = []
    for cp in map(ord, members):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


def translate(pattern: str, *, ascii_only: bool = False) -> re.Pattern[str]:
    """An Oniguruma pattern with \\p{L}, \\p{N}, \\s as a Python pattern with explicit classes; with
    ascii_only, classes cut to ASCII (the same matches on ASCII text, and much faster)."""
    letters, numbers = ("A-Za-z", "0-9") if ascii_only else (_class("L"), _class("N"))
    out, i, depth = [], 0, 0  # depth > 0 inside [...]
    while i < len(pattern):
        two = pattern[i:i + 2]
        if pattern.startswith(r"\p{L}", i) or pattern.startswith(r"\p{N}", i):
            body = letters if pattern[i + 3] == "L" else numbers
            out.append(body if depth else f"[{body}]")
            i += 5
        elif two in (r"\s", r"\S"):
            body = _WHITE[:6] if ascii_only else _WHITE
            if two == r"\s":
                out.append(body if depth else f"[{body}]")
            else:
                if depth:
                    raise ValueError(r"\S inside a character class")
                out.append(f"[^{body}]")
            i += 2
        elif two.startswith("\\"):
            out.append(two)
            i += 2
        else:
            ch = pattern[i]
            depth += ch == "[" and not depth
            depth -= ch == "]" and depth > 0
            out.append(ch)
            i += 1
    return re.compile("".join(out))


def _byte_table() -> list[str]:
    """GPT-2's reversible byte -> printable character map used by ByteLevel pre-tokenizers."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def supports(config: dict[str, Any]) -> str | None:
    """The split pattern when tokenizer.json has the layout this path reproduces, else None."""
    model = config.get("model") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get("byte_fallback"):
        return None
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    normalizer = config.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        return None
    if any(t.get("lstrip") or t.get("rstrip") or t.get("single_word") for t in config.get("added_tokens", [])):
        return None
    pre = config.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return GPT2_PATTERN
    steps = pre.get("pretokenizers") or []
    if (pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split"
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex")
            and not steps[1].get("add_prefix_space")):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        if regex in KNOWN_PATTERNS:
            return regex
    return None


class _Counts(dict):
    """word -> token count, computed on first use."""

    def __init__(self, fn: Any):
        super().__init__()
        self.fn = fn

    def __missing__(self, key: str) -> int:
        value = self[key] = self.fn(key)
        return value


class FastCounter:
    """Token counts equal to tokenizers' encode(text, add_special_tokens=False), for supported layouts."""

    exact = True

    def __init__(self, config: dict[str, Any], model: Any):
        pattern = supports(config)
        if pattern is None:
            raise ValueError("tokenizer layout not supported by the fast path")
        full, ascii_split = translate(pattern).findall, translate(pattern, ascii_only=True).findall
        self.split = lambda text: ascii_split(text) if text.isascii() else full(text)
        self.nfc = (config.get("normalizer") or {}).get("type") == "NFC"
        added = sorted({t["content"] for t in config.get("added_tokens", [])}, key=len, reverse=True)
        self.split_added = re.compile("(" + "|".join(map(re.escape, added)) + ")").split if added else None
        self.added = tuple(added)
        self.added_first = "".join(sorted({a[0] for a in added if a}))
        # count plans (see plan()) need added tokens that no other one begins with: then a match never runs
        # from a literal into a content
        self.prefix_free = not any(a != b and b.startswith(a) for a in added for b in added)
        self.plans: dict[Any, tuple[int, int, tuple[tuple[bool, bool], ...]] | None] = {}
        # bytes -> GPT-2's printable characters, in C (ASCII text is its own UTF-8 and latin-1 reading)
        table = dict(enumerate(_byte_table()))
        tokenize = model.tokenize

        def tokens(piece: str) -> int:
            if not piece.isascii():
                piece = piece.encode("utf-8").decode("latin-1")
            return len(tokenize(piece.translate(table)))

        self.pieces = pieces = _Counts(tokens)
        split = self.split

        def word_tokens(word: str) -> int:
            """Tokens of a word; letters alone (str.isalpha() is exactly \\p{L}), after at most one leading
            space, are one piece under every known pattern, so they skip the regex and the piece cache."""
            if word.isalpha() or (word[1:].isalpha() and word[0] == " "):
                return tokens(word)
            found = split(word)
            return tokens(found[0]) if len(found) == 1 else sum(map(pieces.__getitem__, found))

        self.first = _Counts(word_tokens)
        self.spaced = _Counts(lambda w: word_tokens(" " + w))
        self.short = _Counts(self._full)

    def _plain(self, text: str) -> int:
        """Tokens of text with no added token in it."""
        if len(text) < 48:  # template boilerplate ("assistant\n", "\n\n") repeats in every sample
            return self.short[text]
        if text.isascii():
            unclean = ("  " in text or "\n " in text or "\t " in text or "\r " in text or "\x0b " in text
                       or "\x0c " in text)
        else:
            if self.nfc and not unicodedata.is_normalized("NFC", text):
                text = unicodedata.normalize("NFC", text)
            unclean = _UNCLEAN.search(text) is not None
        words = text.split(" ")
        if unclean:
            words = _clean_chunks(words)
        return self.first[words[0]] + sum(map(self.spaced.__getitem__, words[1:]))

    def _full(self, text: str) -> int:
        if self.nfc and not text.isascii() and not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        return sum(map(self.pieces.__getitem__, self.split(text)))

    CACHE_WORDS = 1 << 19  # memoized entries per cache (~50 MB); beyond it the cache is cut (bounded memory)

    def _bound(self) -> None:
        limit = self.CACHE_WORDS
        if len(self.spaced) > limit or len(self.pieces) > limit or len(self.short) > limit or len(self.first) > limit:
            self._trim()

    def _trim(self) -> None:
        """Keep the first quarter of each full cache: words met first are mostly the frequent ones (a
        rare word keeps arriving for the whole dataset), and re-counting them all would cost seconds."""
        for cache in (self.spaced, self.pieces, self.first, self.short):
            if len(cache) > self.CACHE_WORDS:
                keep = list(islice(cache.items(), self.CACHE_WORDS // 4))
                cache.clear()
                cache.update(keep)

    def count_one(self, text: str, spans: list[tuple[int, int]]) -> tuple[int, int] | None:
        """(total, response) or None when a span edge may fall inside a piece (the caller then encodes)."""
        self._bound()
        parts = self.split_added(text) if self.split_added else [text]  # plain, added, plain, added, ...
        cuts = [e for span in spans for e in span if 0 < e < len(text)]
        plain = self._plain
        if not cuts:  # one span over everything (pretraining) or none
            total = len(parts) // 2 + sum(map(plain, filter(None, parts[::2])))
            return total, (total if spans else 0)
        cuts.sort()
        short = self.short
        total = response = pos = k = c = 0
        n_spans, n_cuts = len(spans), len(cuts)
        for i, part in enumerate(parts):
            if not part:
                continue
            end = pos + len(part)
            while c < n_cuts and cuts[c] <= pos:
                c += 1
            if c < n_cuts and cuts[c] < end:  # a span edge inside this part: count the sides apart
                if i & 1:
                    return None
                bounds = [pos]
                while c < n_cuts and cuts[c] < end:
                    if not _safe_edge(text, cuts[c]):
                        return None
                    bounds.append(cuts[c])
                    c += 1
                bounds.append(end)
                pieces = [(bounds[j], plain(text[bounds[j]:bounds[j + 1]])) for j in range(len(bounds) - 1)]
            else:
                n = 1 if i & 1 else (short[part] if len(part) < 48 else plain(part))
                total += n
                while k < n_spans and spans[k][1] <= pos:
                    k += 1
                if k < n_spans and spans[k][0] <= pos:
                    response += n
                pos = end
                continue
            for start, n in pieces:
                total += n
                while k < n_spans and spans[k][1] <= start:
                    k += 1
                if k < n_spans and spans[k][0] <= start:
                    response += n
            pos = end
        return total, response

    def plan(self, shape: Any) -> tuple[int, int, tuple[tuple[bool, bool], ...]] | None:
        """How to count a chat-template skeleton (planner.data.skeleton) without rendering it: the tokens of
        its literal text (constant), plus each slot's own count. Exact when every seam between a literal and
        a slot is a piece boundary whatever the slot holds: an added token on the literal's side, or a line
        break before the slot (the slot must then not start with whitespace, checked per sample). Literals
        are cut at span edges only where that is a boundary too. None when the skeleton has another seam."""
        if shape in self.plans:
            return self.plans[shape]
        self.plans[shape] = None
        if not self.prefix_free:
            return None
        segments = shape.segments()
        ends = self.added

        def boundary(left: str, right: str) -> bool:
            return (left.endswith(ends) or right.startswith(ends) or
                    (left[-1] in "\r\n" and not right[0].isspace()))

        total = response = 0
        slots: list[tuple[bool, bool]] = []  # (in a span, after a line break)
        for i, segment in enumerate(segments):
            before = segments[i - 1] if i else None
            after = segments[i + 1] if i + 1 < len(segments) else None
            if segment[0] == "text":
                _, text, inside = segment
                if before is not None and before[0] == "text" and not boundary(before[1], text):
                    return None
                n = self.count_one(text, [])[0]  # type: ignore[index]
                total += n
                response += n if inside else 0
                continue
            if (before is not None and before[0] != "text") or (after is not None and after[0] != "text"):
                return None  # two slots meet
            if after is not None and not after[1].startswith(ends):
                return None
            line_break = before is not None and not before[1].endswith(ends)
            if line_break and before[1][-1] not in "\r\n":
                return None
            slots.append((segment[1], line_break))
        plan = self.plans[shape] = (total, response, tuple(slots))
        return plan

    def count_planned(self, plan: tuple[int, int, tuple[tuple[bool, bool], ...]],
                      values: list[str]) -> tuple[int, int] | None:
        """(total, response) of a planned skeleton filled with `values`; None when a value breaks a seam (empty,
        whitespace after a line break, or an added token's first character anywhere in it)."""
        self._bound()
        total, response, slots = plan
        plain, first = self._plain, self.added_first
        for (inside, line_break), value in zip(slots, values, strict=True):
            if not value or (line_break and value[0].isspace()):
                return None
            if first and (first in value if len(first) == 1 else any(ch in value for ch in first)):
                return None
            n = plain(value)
            total += n
            if inside:
                response += n
        return total, response


def _clean_chunks(words: list[str]) -> list[str]:
    """Rejoin words whose separating space follows whitespace: a piece starts at a space only when a
    non-space precedes it (no branch of the known patterns runs a non-space into a space)."""
    out = [words[0]]
    for word in words[1:]:
        prev = out[-1]
        if prev and not prev[-1].isspace():
            out.append(word)
        else:
            out[-1] = prev + " " + word
    return out


def _safe_edge(text: str, pos: int) -> bool:
    """Whether a piece boundary is certain at pos inside plain text: right after a line break that a
    non-space follows (no piece of the known patterns holds a newline then a non-space). Edges at added
    tokens never reach here: they end the parts already."""
    return text[pos - 1] in "\r\n" and not text[pos].isspace()
