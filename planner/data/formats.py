"""Dataset formats -> one conversation shape (`Sample`), as LLaMA-Factory reads them.

- alpaca: `instruction`, `input`, `output`, `system`, `history` ([[query, answer], ...]). The user turn is
  instruction + "\\n" + input when input is non-empty (LLaMA-Factory data/converter.py joins them with "\\n").
- sharegpt: `conversations` of {from, value}; from = human|gpt|system|function_call|observation; `tools`.
- messages: OpenAI style `messages` of {role, content[, tool_calls]}; `tools`.
- text: pretraining `{"text": ...}`.

Column and tag names follow LLaMA-Factory's dataset_info.json (`columns`, `tags`), so a registry entry
maps straight onto `FormatSpec`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from planner.errors import UserError

FORMATS = ("alpaca", "sharegpt", "messages", "text")


class Sample(NamedTuple):
    """One training example: chat messages (role/content dicts) or a pretraining text."""

    messages: tuple[dict[str, Any], ...]
    tools: list[dict[str, Any]] | None
    text: str | None  # pretraining text; messages is empty then
    file: str
    line: int


ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output",
                  "system": "system", "history": "history", "tools": "tools"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools"}
MESSAGES_COLUMNS = {"messages": "messages", "system": "system", "tools": "tools"}
_DEFAULT_COLUMNS = {"alpaca": ALPACA_COLUMNS, "sharegpt": SHAREGPT_COLUMNS, "messages": MESSAGES_COLUMNS,
                    "text": {"prompt": "text"}}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
MESSAGES_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system"}


@dataclass(frozen=True)
class FormatSpec:
    """How to read one file's records: the format and its column/tag names."""

    format: str
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    ranking: bool = False
    _names: dict[str, str] = field(default_factory=dict, init=False, compare=False, repr=False)  # column() memo

    def column(self, key: str) -> str:
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = self.columns.get(key) or _DEFAULT_COLUMNS[self.format].get(key, key)
        return name

    def tag(self, key: str) -> str:
        defaults = MESSAGES_TAGS if self.format == "messages" else SHAREGPT_TAGS
        return self.tags.get(key) or defaults[key]


def detect_format(record: Any, where: str) -> FormatSpec:
    """Guess the format from the first record's keys."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object per record, found {type(record).__name__}.")
    keys = set(record)
    for key in ("conversations", "messages"):
        turns = record.get(key)
        if key in keys and not isinstance(turns, list):
            raise _not_turns(where, key, turns)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            if "from" in turns[0] or "value" in turns[0]:
                return FormatSpec("sharegpt", columns={"messages": key})
            return FormatSpec("messages", columns={"messages": key})
        if isinstance(turns, list) and key in keys:
            return FormatSpec("sharegpt" if key == "conversations" else "messages", columns={"messages": key})
    if "instruction" in keys and ("output" in keys or "input" in keys):
        return FormatSpec("alpaca")
    if "prompt" in keys and ("response" in keys or "completion" in keys):
        return FormatSpec("alpaca", columns={"prompt": "prompt", "query": "query",
                                             "response": "response" if "response" in keys else "completion"})
    if "text" in keys or "content" in keys:
        return FormatSpec("text", columns={"prompt": "text" if "text" in keys else "content"})
    found = ", ".join(sorted(map(str, keys))) or "none"
    raise UserError(
        f"{where}: cannot tell the dataset format; the record has the fields: {found}.",
        "Expected alpaca (instruction, input, output), sharegpt (conversations of from/value), "
        "messages (messages of role/content) or text (text). Force one with --format-data "
        "alpaca|sharegpt|messages|text, or describe the columns in a dataset_info.json.")


def _missing(where: str, spec: FormatSpec, expected: list[str], record: dict[str, Any]) -> UserError:
    found = ", ".join(sorted(map(str, record))) or "none"
    return UserError(
        f"{where}: {spec.format} records need the field(s) {', '.join(expected)}; found: {found}.",
        "Fix the record, pick the right format with --format-data, or map the columns in dataset_info.json.")


def _not_turns(where: str, key: str, value: Any) -> UserError:
    return UserError(f"{where}: {key!r} should be a list of turns, found {type(value).__name__} "
                     f"({json.dumps(value, ensure_ascii=False, default=str)[:60]}).",
                     "sharegpt: [{\"from\": \"human\", \"value\": ...}, ...]; messages: "
                     "[{\"role\": \"user\", \"content\": ...}, ...].")


def _text(value: Any, where: str, name: str) -> str:
    """A text field: a string (or missing). Numbers, lists and objects are errors, not silently str()-ed:
    LLaMA-Factory's converters fail on them, so a plan must not count them as text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    shown = json.dumps(value, ensure_ascii=False, default=str)[:60]
    raise UserError(f"{where}: field {name!r} should be a string, found {type(value).__name__} ({shown}).",
                    "Quote the value as a JSON string, or fix the record.")


def to_sample(record: Any, spec: FormatSpec, file: str, line: int) -> Sample:
    """Convert one record; errors name file:line and the fields expected and found."""
    where = f"{file}:{line}"
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, found {type(record).__name__}.")
    fmt = spec.format
    if fmt == "text":
        key = spec.column("prompt")
        if key not in record:
            raise _missing(where, spec, [key], record)
        return Sample((), None, _text(record[key], where, key), file, line)
    tools = _tools(record.get(spec.column("tools")), where)
    if fmt == "alpaca":
        messages = _alpaca(record, spec, where)
    else:
        messages = _chat(record, spec, where)
    return Sample(tuple(messages), tools, None, file, line)


def _alpaca(record: dict[str, Any], spec: FormatSpec, where: str) -> list[dict[str, Any]]:
    prompt_key, query_key = spec.column("prompt"), spec.column("query")
    response_key = spec.column("response")
    if spec.ranking:
        response_key = _longer(record, spec.column("chosen"), spec.column("rejected"))
    if prompt_key not in record or response_key not in record:
        raise _missing(where, spec, [prompt_key, response_key], record)
    messages: list[dict[str, Any]] = []
    system = _text(record.get(spec.column("system")), where, "system")
    if system:
        messages.append({"role": "system", "content": system})
    history = record.get(spec.column("history")) or []
    if not isinstance(history, list):
        raise UserError(f"{where}: 'history' should be a list of [query, answer] pairs.")
    for turn in history:
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise UserError(f"{where}: each 'history' entry should be a [query, answer] pair, found {turn!r:.60}.")
        messages.append({"role": "user", "content": _text(turn[0], where, "history")})
        messages.append({"role": "assistant", "content": _text(turn[1], where, "history")})
    user = _text(record[prompt_key], where, prompt_key)
    query = _text(record.get(query_key), where, query_key)
    if query:
        user = user + "\n" + query if user else query
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": _response_text(record[response_key], where, response_key,
                                                                    ranking=spec.ranking)})
    return messages


def _response_text(value: Any, where: str, name: str, *, ranking: bool = False) -> str:
    if ranking:  # preference data: {"from": "gpt", "value": ...} or [chosen, rejected]
        if isinstance(value, dict):
            value = value.get("value", value.get("content"))
        if isinstance(value, list) and value and isinstance(value[0], str):
            value = value[0]
    elif isinstance(value, list):
        raise UserError(f"{where}: field {name!r} should be a string, found a list of {len(value)}.",
                        "A list of answers is preference data: mark the dataset with \"ranking\": true "
                        "in dataset_info.json, or keep one answer.")
    return _text(value, where, name)


def _longer(record: dict[str, Any], chosen: str, rejected: str) -> str:
    """Preference data trains on both answers; the longer one decides the sequence length."""
    if chosen not in record or rejected not in record:
        return chosen
    return chosen if len(str(record[chosen])) >= len(str(record[rejected])) else rejected


def _chat(record: dict[str, Any], spec: FormatSpec, where: str) -> list[dict[str, Any]]:
    key = spec.column("messages")
    turns = record.get(key)
    if key in record and not isinstance(turns, list):
        raise _not_turns(where, key, turns)
    if not isinstance(turns, list):
        raise _missing(where, spec, [key], record)
    role_tag, content_tag = spec.tag("role_tag"), spec.tag("content_tag")
    roles = {spec.tag("user_tag"): "user", spec.tag("assistant_tag"): "assistant",
             spec.tag("observation_tag"): "tool", spec.tag("function_tag"): "function_call",
             spec.tag("system_tag"): "system"}
    if spec.format == "messages":
        roles.update({"user": "user", "assistant": "assistant", "system": "system", "tool": "tool",
                      "developer": "system", "function": "tool"})
    messages: list[dict[str, Any]] = []
    system = _text(record.get(spec.column("system")), where, "system")
    if system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_tag not in turn:
            found = ", ".join(sorted(map(str, turn))) if isinstance(turn, dict) else type(turn).__name__
            raise UserError(f"{where}: turn {i} of {key!r} needs the fields {role_tag!r} and {content_tag!r}; "
                            f"found: {found}.",
                            "Map other names with `tags` in dataset_info.json, or force --format-data.")
        role = roles.get(turn[role_tag])
        if role is None:
            raise UserError(f"{where}: turn {i} has the unknown role {turn[role_tag]!r}; "
                            f"expected one of {', '.join(map(repr, roles))}.")
        if spec.format == "messages":
            message = {k: v for k, v in turn.items() if v is not None}
            message["role"] = role
            if content_tag != "content" and content_tag in message:
                message["content"] = message.pop(content_tag)
        else:
            message = {"role": role, "content": _text(turn.get(content_tag), where, content_tag)}
        if role == "function_call":
            message = _function_call(message.get("content", ""))
        messages.append(message)
    if spec.ranking:
        answer = _longer(record, spec.column("chosen"), spec.column("rejected"))
        if answer in record:
            messages.append({"role": "assistant", "content": _response_text(record[answer], where, answer,
                                                                            ranking=True)})
    return messages


def _function_call(value: Any) -> dict[str, Any]:
    """A sharegpt function_call turn becomes an assistant message with tool_calls (the HF chat format)."""
    try:
        calls = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return {"role": "assistant", "content": value}
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list) or not all(isinstance(c, dict) and "name" in c for c in calls):
        return {"role": "assistant", "content": value if isinstance(value, str) else json.dumps(value)}
    tool_calls = [{"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}}
                  for c in calls]
    return {"role": "assistant", "content": "", "tool_calls": tool_calls}


def _tools(value: Any, where: str) -> list[dict[str, Any]] | None:
    """Tools as a list of {"type": "function", "function": schema} (a JSON string in sharegpt files)."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: 'tools' is not valid JSON: {exc.msg}.") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise UserError(f"{where}: 'tools' should be a list of function schemas.")
    tools = []
    for tool in value:
        if isinstance(tool, dict) and "function" not in tool and "name" in tool:
            tool = {"type": "function", "function": tool}
        tools.append(tool)
    return tools or None


@dataclass(frozen=True)
class Source:
    """One data file and how to read it (spec None: detect from its first record)."""

    path: Path
    spec: FormatSpec | None = None
    name: str | None = None  # dataset_info entry, for messages
