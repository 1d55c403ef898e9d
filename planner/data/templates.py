"""Chat templates: render a conversation exactly as training will, and find the trainable spans.

The environment mirrors transformers' apply_chat_template (transformers/utils/chat_template_utils.py):
an ImmutableSandboxedEnvironment with trim_blocks/lstrip_blocks and loopcontrols, `raise_exception`,
a `tojson` that does not HTML-escape, `strftime_now`, and the special tokens (bos_token, eos_token, ...)
as variables. Messages lose their None-valued keys first, as transformers does.

Trainable spans: training masks the prompt; the labels are each assistant turn as the template writes it
(content plus its end-of-turn text). A turn starts where the rendering of the conversation before it, with
the generation prompt, ends; it ends where the conversation up to it ends. Templates that write earlier
turns differently from the last one (Qwen3 drops old reasoning) fall back to locating the content.

    >>> tpl = ChatTemplate.builtin("chatml")
    >>> text, spans = tpl.render_spans(messages, tools=None)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from planner.errors import UserError

BUILTIN = ("chatml", "qwen", "qwen3", "llama3", "llama2", "mistral", "gemma", "phi", "glm4", "default", "alpaca", "empty")
_ALIASES = {"alpaca": "default"}
# Built-ins that render exactly as LLaMA-Factory's template of the same name (name -> source), checked against
# LLaMA-Factory's own pipeline in tests/planner/data/test_llamafactory_pipeline.py when it is importable.
LF_RENDERED = {"qwen": "llamafactory 0.9.5 data/template.py:1946, tool_utils.py:80-86, 588-608",
               "qwen3": "llamafactory 0.9.5 data/template.py:1963, 438-472, tool_utils.py:80-86, 588-608"}
# model_type -> built-in template for models whose tokenizer ships none.
_FAMILY_TEMPLATE = {
    "qwen2": "chatml", "qwen3": "chatml", "qwen2_moe": "chatml", "qwen3_moe": "chatml", "internlm2": "chatml",
    "mistral": "mistral", "mixtral": "mistral", "gemma2": "gemma", "phi3": "phi", "glm": "glm4", "glm4": "glm4",
}
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class _Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text in some templates; it renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def builtin_source(name: str) -> str:
    name = _ALIASES.get(name, name)
    if name not in BUILTIN:
        raise unknown_template(name)
    return (resources.files("profiles") / "templates" / f"{name}.jinja").read_text(encoding="utf-8")


def family_template(model_type: str, vocab_size: int = 0) -> str:
    """Built-in template for a model family (Llama 3 is told from Llama 2 by its 128k vocabulary)."""
    if model_type == "llama" or model_type == "baichuan":
        return "llama3" if vocab_size >= 128000 else "llama2"
    return _FAMILY_TEMPLATE.get(model_type, "default")


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template plus the variables transformers passes to it."""

    name: str  # "model" (the tokenizer's own), a built-in name, or a file path
    source: str
    special_tokens: dict[str, str] = field(default_factory=dict)

    @classmethod
    def builtin(cls, name: str, special_tokens: dict[str, str] | None = None) -> ChatTemplate:
        return cls(_ALIASES.get(name, name), builtin_source(name), dict(special_tokens or {}))

    @classmethod
    def from_file(cls, path: Path, special_tokens: dict[str, str] | None = None) -> ChatTemplate:
        try:
            source = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"--template {path}: cannot read the file ({exc.strerror}).") from None
        return cls(str(path), source, dict(special_tokens or {}))

    def render(self, messages: list[dict[str, Any]] | tuple[dict[str, Any], ...],
               tools: list[dict[str, Any]] | None = None, *, add_generation_prompt: bool = False) -> str:
        try:
            return compile_template(self.source).render(
                messages=_clean(messages), tools=tools, documents=None,
                add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise UserError(f"chat template {self.name}: syntax error at line {exc.lineno}: {exc.message}") from None

    def render_spans(self, messages: tuple[dict[str, Any], ...] | list[dict[str, Any]],
                     tools: list[dict[str, Any]] | None = None) -> tuple[str, list[tuple[int, int]]]:
        """Full text and the (start, end) character spans of the assistant turns (the labels)."""
        full = self.render(messages, tools)
        spans: list[tuple[int, int]] = []
        cursor = 0
        last = len(messages) - 1
        for i, message in enumerate(messages):
            if message.get("role") != "assistant":
                continue
            start = self._turn_start(messages, tools, i, full, cursor)
            end = len(full) if i == last else self._turn_end(messages, tools, i, full, start)
            if end > start:
                spans.append((start, end))
                cursor = end
        return full, spans

    def _turn_start(self, messages: Any, tools: Any, i: int, full: str, cursor: int) -> int:
        try:
            prefix = self.render(messages[:i], tools, add_generation_prompt=True) if i else ""
        except jinja2.exceptions.TemplateError:
            prefix = None
        if prefix is not None and len(prefix) >= cursor and full.startswith(prefix):
            return len(prefix)
        return _locate(full, _content_text(messages[i]), cursor, start=True)

    def _turn_end(self, messages: Any, tools: Any, i: int, full: str, start: int) -> int:
        try:
            upto = self.render(messages[: i + 1], tools)
            prefix = self.render(messages[:i], tools, add_generation_prompt=True) if i else ""
        except jinja2.exceptions.TemplateError:
            upto = prefix = None
        if upto is not None and len(upto) > start and full.startswith(upto):
            return len(upto)
        content = _content_text(messages[i]).strip()
        if upto is not None and prefix is not None and upto.startswith(prefix):
            # The turn as written when it is the last one; find its longest tail at `start` (Qwen3 adds
            # an empty think block only to the last turn).
            turn = upto[len(prefix):]
            for k in range(len(turn)):
                tail = turn[k:]
                if (content in tail if content else len(tail) > 1) and full.startswith(tail, start):
                    return start + len(tail)
        end = _locate(full, content, start, start=False)
        if upto is not None and content:  # add the end-of-turn text that follows the content
            at = upto.rfind(content)
            suffix = upto[at + len(content):] if at >= 0 else ""
            if suffix and full.startswith(suffix, end):
                end += len(suffix)
        return end


def _clean(messages: Any) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}
        reasoning = next((m[k] for k in _REASONING_KEYS if m.get(k) is not None), None)
        if reasoning is not None:  # transformers aliases these for templates that read either name
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def _content_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return str.__str__(content)  # a plain copy: string methods below must not act on subclasses
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _locate(full: str, content: str, cursor: int, *, start: bool) -> int:
    """Where the content begins (start) or ends in the rendered text, searching from cursor."""
    for needle in (content, content.strip()):
        if needle:
            at = full.find(needle, cursor)
            if at >= 0:
                return at if start else at + len(needle)
    return cursor


def unknown_template(name: str) -> UserError:
    """--template NAME that is neither built in nor a file: the closest names, never a silent mapping."""
    import difflib

    from planner.trainers import recipe

    lf_names = tuple(recipe("llamafactory").value("templates", ()) or ())
    if name in lf_names:
        return UserError(f"--template {name}: LLaMA-Factory has this template, but vramplan does not render it "
                         f"as LLaMA-Factory does (it renders {', '.join(LF_RENDERED)}).",
                         "Use --template model (the tokenizer's own), a built-in one, or a .jinja file with the "
                         "same format.")
    close = difflib.get_close_matches(name, list(BUILTIN) + list(lf_names), n=4, cutoff=0.5)
    hint = f" Closest: {', '.join(close)}." if close else ""
    return UserError(f"--template {name!r} is not a template vramplan or LLaMA-Factory knows.{hint}",
                     f"Built-in: {', '.join(BUILTIN)}; `model` for the model's own; or a .jinja file.")
