"""Render a chat template once per conversation shape, then fill in each sample's texts.

Rendering a Hub chat template in the jinja sandbox costs ~100-200 us per call, and the label spans need
two or three calls per sample. Most samples of a dataset share a shape (roles in order, which contents
are empty, no tools), and most templates only concatenate the contents. So the template is rendered
once per shape with marker strings (`_Slot`) standing for the contents; every string operation the
template applies to a slot is recorded: tests (`'</think>' in content`, startswith, ==) with their
result, transformations (strip, lstrip, lower, ...) as a chain applied to the real text later. A sample
takes the skeleton only when every recorded test gives the same answer on its real contents; anything
else the template does with a slot (split, slicing, len, escaping) retires the shape to plain rendering.
The caller also checks skeleton renders against plain renders on a sample of the data.

    >>> skel = Skeletons(template)
    >>> skel.render_spans(messages, tools)   # (text, spans), or None: render the plain way
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any

# Private-use code points: never in templates, rare in data. A slot reads \ue000N\ue001; a transformed slot
# appends \ue002M\ue003, so a search for the base slot still finds it (and then lands inside a slot, which
# retires the shape rather than giving a wrong span).
_OPEN, _CLOSE, _OPEN2, _CLOSE2 = "\ue000", "\ue001", "\ue002", "\ue003"
_MARK = re.compile(f"({_OPEN}\\d+{_CLOSE}(?:{_OPEN2}\\d+{_CLOSE2})?)")
_MARKERS = (_OPEN, _CLOSE, _OPEN2, _CLOSE2)
_TESTS = ("__contains__", "startswith", "endswith", "__eq__", "__ne__", "isspace", "isdigit", "isalpha",
          "isupper", "islower")
_TRANSFORMS = ("strip", "lstrip", "rstrip", "lower", "upper", "title", "capitalize", "replace")
_BLOCKED = ("split", "rsplit", "splitlines", "partition", "rpartition", "find", "rfind", "index", "rindex",
            "count", "format", "join", "center", "ljust", "rjust", "zfill", "encode", "casefold",
            "expandtabs", "translate", "swapcase", "removeprefix", "removesuffix", "__getitem__", "__iter__",
            "__mod__", "__mul__", "__rmul__", "__lt__", "__le__", "__gt__", "__ge__")


class _Unsupported(Exception):
    """The template did something with a content that the skeleton cannot replay."""


class _Recorder:
    def __init__(self) -> None:
        self.tests: list[tuple[str, str, tuple[Any, ...], Any]] = []  # (slot text, op, args, result)
        self.chains: dict[str, tuple[int, tuple[tuple[str, tuple[Any, ...]], ...]]] = {}  # slot text -> ...
        self.derived: dict[tuple[str, str, tuple[Any, ...]], str] = {}  # same op on same slot, same slot


def _make_slot_class(rec: _Recorder) -> type:
    class Slot(str):
        key: str

        def __new__(cls, key: str) -> Slot:
            obj = super().__new__(cls, key)
            obj.key = key
            return obj

    def test(name: str) -> Any:
        base = getattr(str, name)

        def method(self: Any, *args: Any) -> Any:
            if any(isinstance(a, Slot) for a in args):
                raise _Unsupported(name)
            result = base(self, *args)
            rec.tests.append((self.key, name, args, result))
            return result
        return method

    def transform(name: str) -> Any:
        def method(self: Any, *args: Any) -> Any:
            if any(isinstance(a, Slot) for a in args):
                raise _Unsupported(name)
            idx, chain = rec.chains[self.key]
            key = rec.derived.get((self.key, name, args))
            if key is None:
                base = self.key.split(_CLOSE)[0] + _CLOSE
                key = rec.derived[(self.key, name, args)] = f"{base}{_OPEN2}{len(rec.derived)}{_CLOSE2}"
                rec.chains[key] = (idx, (*chain, (name, args)))
            return Slot(key)
        return method

    def blocked(name: str) -> Any:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            raise _Unsupported(name)
        return method

    for name in _TESTS:
        setattr(Slot, name, test(name))
    for name in _TRANSFORMS:
        setattr(Slot, name, transform(name))
    for name in _BLOCKED:
        setattr(Slot, name, blocked(name))
    Slot.__hash__ = str.__hash__  # type: ignore[method-assign]  # kept hashable despite __eq__
    return Slot


class _Shape:
    """One rendered skeleton: literal text with slot references, the spans, and the recorded tests."""

    def __init__(self, text: str, spans: list[tuple[int, int]], rec: _Recorder):
        self.chains = rec.chains
        # the tests as (content index, chain, str method, args, result), each distinct test once
        try:
            tests = list(dict.fromkeys(rec.tests))
        except TypeError:  # an unhashable argument: keep them all
            tests = rec.tests
        self.checks = [(*rec.chains[key], getattr(str, name), args, result) for key, name, args, result in tests]
        self.parts: list[str | tuple[int, tuple[tuple[str, tuple[Any, ...]], ...]]] = []
        self.edges: list[tuple[int, int]] = []  # span edges as (part index, offset in that literal)
        pieces = _MARK.split(text)
        starts, pos = [], 0
        for i, piece in enumerate(pieces):
            starts.append(pos)
            if i % 2:
                if piece not in rec.chains:
                    raise _Unsupported("unknown slot")
                self.parts.append(rec.chains[piece])
                pos += len(piece)
            else:
                if any(m in piece for m in _MARKERS):  # a slot was escaped or cut: not a plain copy
                    raise _Unsupported("mangled slot")
                self.parts.append(piece)
                pos += len(piece)
        for span in spans:
            for edge in span:
                j = max(i for i in range(0, len(pieces), 2) if starts[i] <= edge)
                if edge > starts[j] + len(pieces[j]):
                    raise _Unsupported("span edge inside a slot")
                self.edges.append((j, edge - starts[j]))

    def passes(self, contents: list[str]) -> bool:
        """Whether every test the template made on the slots gives the same answer on these contents."""
        for idx, chain, method, args, result in self.checks:
            if method(contents[idx] if not chain else _apply(contents, idx, chain), *args) != result:
                return False
        return True

    def segments(self) -> list[tuple[Any, ...]]:
        """The skeleton in text order: ("text", literal, in_span) and ("slot", in_span); literals are cut at
        the span edges and empty ones left out. slot_values() gives the slots' texts in the same order."""
        cuts: dict[int, list[int]] = {}
        for j, offset in self.edges:
            cuts.setdefault(j, []).append(offset)
        out: list[tuple[Any, ...]] = []
        inside = False
        for j, part in enumerate(self.parts):
            if part.__class__ is not str:
                out.append(("slot", inside))
                continue
            start = 0
            for offset in sorted(cuts.get(j, [])):  # an edge toggles in/out of a span (spans never nest)
                if offset > start:
                    out.append(("text", part[start:offset], inside))
                start = offset
                inside = not inside
            if len(part) > start:
                out.append(("text", part[start:], inside))
        return out

    def slot_values(self, contents: list[str]) -> list[str]:
        """Each slot's text (content after its recorded transformations), in segments() order."""
        return [contents[part[0]] if not part[1] else _apply(contents, *part)
                for part in self.parts if part.__class__ is not str]

    def fill(self, contents: list[str]) -> tuple[str, list[tuple[int, int]]] | None:
        """Text and spans for contents that pass() (None when a content holds the marker characters)."""
        # parts: literal text, or (content index, chain); most chains are empty
        out = [part if part.__class__ is str else
               (contents[part[0]] if not part[1] else _apply(contents, *part)) for part in self.parts]
        text = "".join(out)
        if _OPEN in text or _CLOSE in text or _OPEN2 in text or _CLOSE2 in text:  # data holding the markers
            return None
        if not self.edges:
            return text, []
        offsets = [0, *accumulate(map(len, out))]
        edges = [offsets[j] + off for j, off in self.edges]
        return text, [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]


def _apply(contents: list[str], idx: int, chain: tuple[tuple[str, tuple[Any, ...]], ...]) -> str:
    text = contents[idx]
    for name, args in chain:
        text = getattr(str, name)(text, *args)
    return text


class Skeletons:
    """Skeleton cache of one ChatTemplate (see the module docstring)."""

    CHECK_FIRST, CHECK_EVERY = 4, 128  # skeleton renders compared with plain renders: per shape, overall

    def __init__(self, template: Any):
        self.template = template
        self.shapes: dict[tuple[Any, ...], _Shape | None] = {}
        self.uses: dict[tuple[Any, ...], int] = {}
        self.filled = 0

    def _match(self, messages: tuple[dict[str, Any], ...] | list[dict[str, Any]],
               tools: Any) -> tuple[tuple[Any, ...], _Shape, list[str]] | None:
        """The shape of a sample and its contents, when it has a live skeleton whose tests it passes."""
        if tools:
            return None
        shape_key = []
        contents = []
        for m in messages:
            content = m.get("content")
            if len(m) != 2 or not isinstance(content, str):  # tool calls, names, content parts: plain path
                return None
            shape_key.append((m.get("role"), content == ""))
            contents.append(content)
        key = tuple(shape_key)
        shape = self.shapes.get(key, False)
        if shape is False:
            shape = self.shapes[key] = self._build(key)
        if shape is None or not shape.passes(contents):
            return None
        return key, shape, contents

    def render_spans(self, messages: tuple[dict[str, Any], ...] | list[dict[str, Any]],
                     tools: Any) -> tuple[str, list[tuple[int, int]]] | None:
        found = self._match(messages, tools)
        if found is None:
            return None
        key, shape, contents = found
        got = shape.fill(contents)
        if got is None:
            return None
        self.filled += 1
        uses = self.uses[key] = self.uses.get(key, 0) + 1
        if uses <= self.CHECK_FIRST or self.filled % self.CHECK_EVERY == 0:
            plain = self.template.render_spans(messages, tools)
            if plain != got:
                self.shapes[key] = None  # retire the shape: plain rendering from now on
                return plain
        return got

    def planned(self, messages: tuple[dict[str, Any], ...] | list[dict[str, Any]],
                tools: Any) -> tuple[_Shape, list[str]] | None:
        """The shape and slot values of a sample, for counting without rendering; None when the sample must
        be rendered: no skeleton fits it, or its render is due for the check against plain rendering
        (render_spans does that check)."""
        found = self._match(messages, tools)
        if found is None:
            return None
        key, shape, contents = found
        uses = self.uses.get(key, 0) + 1
        if uses <= self.CHECK_FIRST or (self.filled + 1) % self.CHECK_EVERY == 0:
            return None
        values = shape.slot_values(contents)
        for value in values:
            if not value.isascii() and any(m in value for m in _MARKERS):  # as fill() refuses them
                return None
        self.uses[key] = uses
        self.filled += 1
        return shape, values

    def _build(self, key: tuple[Any, ...]) -> _Shape | None:
        rec = _Recorder()
        slot = _make_slot_class(rec)
        messages = []
        for i, (role, empty) in enumerate(key):
            if empty:
                messages.append({"role": role, "content": ""})
            else:
                text = f"{_OPEN}{i}{_CLOSE}"
                rec.chains[text] = (i, ())
                messages.append({"role": role, "content": slot(text)})
        try:
            text, spans = self.template.render_spans(messages, None)
            shape = _Shape(text, spans, rec)
        except Exception:  # _Unsupported, or a template that rejects the marker text: plain path
            return None
        return shape
