"""Where the tokenizer comes from: --tokenizer PATH > the model folder > the hub cache / a download of the
tokenizer files only > an offline estimate.

    >>> files = resolve_tokenizer(None, spec)
    >>> files.source, files.exact
    ('model folder', True)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.data.templates import SPECIAL_TOKEN_KEYS
from planner.errors import UserError
from planner.model.spec import ModelSpec

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_OPTIONAL_FILES = ("chat_template.jinja", "special_tokens_map.json")


@dataclass(frozen=True)
class TokenizerFiles:
    """The tokenizer.json to encode with (None: estimate) and what its tokenizer_config.json says."""

    source: str  # "--tokenizer" | "model folder" | "hub cache" | "hub download" | "estimate"
    tokenizer_json: Path | None
    chat_template: str | dict[str, str] | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)
    note: str | None = None  # why an earlier step of the chain was skipped

    @property
    def exact(self) -> bool:
        return self.tokenizer_json is not None

    @property
    def location(self) -> str:
        return str(self.tokenizer_json) if self.tokenizer_json else "offline estimate"


def resolve_tokenizer(arg: str | None, model: ModelSpec) -> TokenizerFiles:
    """Walk the chain; a missing --tokenizer is an error, every other miss falls through to the estimate."""
    if arg:
        path = Path(arg).expanduser()
        if path.is_file():
            return _from_folder(path.parent, "--tokenizer", tokenizer_json=path)
        if path.is_dir():
            if not (path / "tokenizer.json").is_file():
                raise UserError(f"--tokenizer {arg}: the folder has no tokenizer.json.",
                                "Point it at a folder holding tokenizer.json (and tokenizer_config.json).")
            return _from_folder(path, "--tokenizer")
        if arg.count("/") == 1 and not arg.startswith((".", "/", "~")):
            found = _from_hub(arg)
            if isinstance(found, TokenizerFiles):
                return found
            raise UserError(f"--tokenizer {arg}: {found}.", "Give a local folder holding tokenizer.json.")
        raise UserError(f"--tokenizer {arg}: no such file or folder.")
    notes = []
    if model.source_dir is not None:
        folder = Path(model.source_dir)
        if (folder / "tokenizer.json").is_file():
            return _from_folder(folder, "model folder")
        notes.append(f"{folder} has no tokenizer.json")
    if model.hub_id:
        found = _from_hub(model.hub_id)
        if isinstance(found, TokenizerFiles):
            return found
        notes.append(found)
    else:
        notes.append("the model has no hub id")
    return TokenizerFiles("estimate", None, note="; ".join(notes))


def hub_offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def _from_hub(repo_id: str) -> TokenizerFiles | str:
    """Tokenizer files from the local hub cache, else downloaded (unless HF_HUB_OFFLINE); or why not."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return "huggingface_hub is not installed"
    cached = {}
    for name in _TOKENIZER_FILES + _OPTIONAL_FILES:
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str):
            cached[name] = Path(hit)
    if "tokenizer.json" in cached:
        return _from_paths(cached, "hub cache")
    if hub_offline():
        return f"{repo_id} is not in the hub cache and HF_HUB_OFFLINE is set"
    from planner.model.hub import hub_reachable

    if not hub_reachable():
        return f"{repo_id} is not in the hub cache and the hub is not reachable"
    try:
        from huggingface_hub import hf_hub_download

        for name in _TOKENIZER_FILES:
            cached[name] = Path(hf_hub_download(repo_id, name))
    except Exception as exc:  # network, auth and missing-file errors all mean "fall through"
        return f"downloading {repo_id} tokenizer files failed ({type(exc).__name__})"
    for name in _OPTIONAL_FILES:
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str):
            cached[name] = Path(hit)
    return _from_paths(cached, "hub download")


def _from_folder(folder: Path, source: str, tokenizer_json: Path | None = None) -> TokenizerFiles:
    paths = {name: folder / name for name in _TOKENIZER_FILES + _OPTIONAL_FILES if (folder / name).is_file()}
    if tokenizer_json is not None:
        paths["tokenizer.json"] = tokenizer_json
    return _from_paths(paths, source)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({exc}).") from None
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):  # AddedToken as saved by transformers
        return value["content"]
    return None


def _from_paths(paths: dict[str, Path], source: str) -> TokenizerFiles:
    config = _read_json(paths["tokenizer_config.json"]) if "tokenizer_config.json" in paths else {}
    extra = _read_json(paths["special_tokens_map.json"]) if "special_tokens_map.json" in paths else {}
    special = {}
    for key in SPECIAL_TOKEN_KEYS:
        text = _token_text(config.get(key)) or _token_text(extra.get(key))
        if text is not None:
            special[key] = text
    template: str | dict[str, str] | None = None
    if "chat_template.jinja" in paths:  # transformers >= 4.43 saves the template beside the config
        template = paths["chat_template.jinja"].read_text(encoding="utf-8")
    elif isinstance(config.get("chat_template"), str):
        template = config["chat_template"]
    elif isinstance(config.get("chat_template"), list):  # named templates: [{"name", "template"}]
        template = {t["name"]: t["template"] for t in config["chat_template"]
                    if isinstance(t, dict) and "name" in t and "template" in t}
    return TokenizerFiles(source, paths["tokenizer.json"], template, special)


def pick_template(template: str | dict[str, str] | None, has_tools: bool) -> str | None:
    """One template out of named ones, as transformers' get_chat_template picks (tool_use, then default)."""
    if template is None or isinstance(template, str):
        return template
    if has_tools and "tool_use" in template:
        return template["tool_use"]
    return template.get("default")
