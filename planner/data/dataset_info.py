"""LLaMA-Factory's dataset registry (data/dataset_info.json): entry name -> local files + format.

An entry (LLaMA-Factory data/README.md): `file_name` (a file or folder beside dataset_info.json),
`formatting` (alpaca | sharegpt, default alpaca), `ranking`, `columns` (our names -> the file's), `tags`
(sharegpt role names). Hub-only entries (`hf_hub_url`, `ms_hub_url`, `om_hub_url`) are not read: the
planner works offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.data.formats import FormatSpec, Source
from planner.data.records import SUFFIXES
from planner.errors import UserError


def load_dataset_info(info_path: Path, names: list[str]) -> list[Source]:
    """Sources of the named entries of one dataset_info.json."""
    if not names:
        raise UserError(f"{info_path}: name the entry to use, e.g. {info_path}:NAME or --dataset NAME.")
    if not info_path.is_file():
        raise UserError(f"{info_path}: no such file.",
                        "--dataset NAME reads DIR/dataset_info.json; set the folder with --dataset-dir DIR.")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{info_path}:{exc.lineno}: malformed JSON: {exc.msg}.") from None
    except UnicodeDecodeError:
        raise UserError(f"{info_path}: the file is not UTF-8.") from None
    if not isinstance(info, dict):
        raise UserError(f"{info_path}: expected a JSON object mapping dataset names to entries.")
    sources: list[Source] = []
    for name in names:
        entry = info.get(name)
        if not isinstance(entry, dict):
            import difflib

            close = [k for k in info if name.lower() in k.lower()][:5] or \
                difflib.get_close_matches(name, list(info), n=5, cutoff=0.5)
            shown = ", ".join(list(info)[:20]) + (f", ... ({len(info)} in all)" if len(info) > 20 else "")
            hint = f"Close names: {', '.join(close)}." if close else f"Its entries: {shown or 'none'}."
            raise UserError(f"{info_path}: no dataset named {name!r}.", hint)
        spec = spec_from_entry(entry, f"{info_path}:{name}")
        file_name = entry.get("file_name")
        if not file_name:
            hub = entry.get("hf_hub_url") or entry.get("ms_hub_url") or entry.get("om_hub_url")
            raise UserError(
                f"{info_path}: dataset {name!r} is not a local file (hub dataset {hub!r}).",
                "Download it (e.g. `huggingface-cli download --repo-type dataset ...`) and pass the files "
                "with --data.")
        path = info_path.parent / file_name
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        elif path.is_file():
            files = [path]
        else:
            raise UserError(f"{info_path}: dataset {name!r} points to {file_name!r}, which does not exist "
                            f"in {info_path.parent}.")
        sources.extend(Source(p, spec, name) for p in files)
    return sources


def spec_from_entry(entry: dict[str, Any], where: str) -> FormatSpec:
    """FormatSpec of one registry entry."""
    formatting = entry.get("formatting", "alpaca")
    if formatting == "openai":  # newer LLaMA-Factory name for role/content messages
        formatting = "messages"
    if formatting not in ("alpaca", "sharegpt", "messages"):
        raise UserError(f"{where}: unknown formatting {formatting!r}.", "Expected alpaca or sharegpt.")
    columns = {str(k): str(v) for k, v in (entry.get("columns") or {}).items()}
    tags = {str(k): str(v) for k, v in (entry.get("tags") or {}).items()}
    if formatting == "alpaca" and set(columns) == {"prompt"}:
        # Pretraining entries map only the text column (LLaMA-Factory c4_demo: {"prompt": "text"}).
        return FormatSpec("text", columns=columns)
    if formatting == "sharegpt" and tags.get("role_tag") == "role" and tags.get("content_tag") == "content":
        formatting = "messages"
    return FormatSpec(formatting, columns=columns, tags=tags, ranking=bool(entry.get("ranking", False)))
