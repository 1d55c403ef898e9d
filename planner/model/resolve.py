"""`--model` resolution: a local folder, a hub id, or a catalog name -> ModelSpec.

Order: an existing path; then, for ids that look like `org/name`, the huggingface_hub cache and (when
online) a download of config.json alone; then the catalog. Remote code is never run: only config.json
is read, as data.

    >>> resolve_model("qwen2.5-7b-instruct").hub_id     # the checkpoint asked for, the catalog's shape
    'Qwen/Qwen2.5-7B-Instruct'
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from planner.errors import UserError
from planner.model.catalog import ModelEntry, closest_models, find_model
from planner.model.config_compat import language_config
from planner.model.generic import generic_spec, stack_key, torch_side
from planner.model.hub import hub_reachable, offline_requested
from planner.model.spec import ARCHS, ModelSpec


def _read_config(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}).",
                        "Fix the file or point --model at another folder.") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object (a transformers config.json).")
    if not isinstance(config.get("model_type"), str):
        raise UserError(f"{path}: no model_type, so it is not a transformers config.json.",
                        "Point --model at the folder of a transformers checkpoint.")
    return config


def spec_from_config(config: dict, *, name: str, hub_id: str | None = None, source: str = "folder",
                     source_dir: Path | None = None, where: str = "config.json",
                     published_params: int | None = None, trust_remote_code: bool = False) -> ModelSpec:
    """The analytic model when the family has one, else the generic path (planner.model.generic); an
    image-text checkpoint plans its language model and counts its vision tower when it can."""
    lm, wrapper = language_config(config)
    kwargs = dict(name=name, hub_id=hub_id, source=source, source_dir=source_dir, where=where,
                  published_params=published_params)
    if lm.get("model_type") not in ARCHS:
        return generic_spec(config, trust_remote_code=trust_remote_code, **kwargs)
    spec = ModelSpec.from_config(config, **kwargs)
    if wrapper:
        spec = dataclasses.replace(spec, **vision_of(config, where))
    return spec


def vision_of(config: dict, where: str) -> dict:
    """{vision_params} of an image-text config counted on the meta device, or {} without torch."""
    side = torch_side()
    if stack_key() is None or side is None:
        return {}
    try:
        facts = side.vision_facts(config, where=where)
    except ImportError:
        return {}
    return {"vision_params": int(facts.get("params") or 0),
            "notes": (facts["note"],) if facts.get("note") else ()}


def spec_from_folder(folder: Path, *, source: str = "folder", hub_id: str | None = None,
                     trust_remote_code: bool = False) -> ModelSpec:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise UserError(f"--model {folder}: the folder has no config.json.",
                        "Point --model at a transformers model folder, a hub id or a catalog name "
                        "(`plan models` lists the catalog).")
    config = _read_config(config_path)
    entry = find_model(hub_id) if hub_id else None
    return spec_from_config(
        config, name=hub_id.rsplit("/", 1)[-1] if hub_id else folder.resolve().name,
        hub_id=hub_id, source=source, source_dir=folder, where=str(config_path),
        published_params=entry.spec.published_params if entry else None, trust_remote_code=trust_remote_code,
    )


def _from_hub(repo_id: str, trust_remote_code: bool = False) -> tuple[ModelSpec | None, str | None]:
    """Cached or downloaded config.json of a hub repo; (None, why) when neither works."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:  # pragma: no cover - a core dependency
        return None, "huggingface_hub is not installed"
    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return spec_from_folder(Path(cached).parent, source="hub", hub_id=repo_id,
                                trust_remote_code=trust_remote_code), None
    if offline_requested():
        return None, "offline and not in the huggingface_hub cache"
    if not hub_reachable():
        return None, "not in the huggingface_hub cache and the hub is not reachable"
    try:
        path = hf_hub_download(repo_id, "config.json", etag_timeout=5)
    except Exception as exc:  # network, auth, missing repo: all end in the same fallback
        return None, f"could not fetch config.json ({type(exc).__name__})"
    return spec_from_folder(Path(path).parent, source="hub", hub_id=repo_id,
                            trust_remote_code=trust_remote_code), None


def resolve_model(name: str, *, trust_remote_code: bool = False) -> ModelSpec:
    """A folder, a hub id or a catalog name -> ModelSpec; UserError naming the closest catalog entries."""
    return resolve_model_noted(name, trust_remote_code=trust_remote_code)[0]


def resolve_model_noted(name: str, *, trust_remote_code: bool = False) -> tuple[ModelSpec, str | None]:
    """resolve_model, plus a line to show the user when a catalog entry stands in for what they named."""
    if not name or not name.strip():
        raise UserError("--model is empty.", "Give a catalog name (e.g. Qwen2.5-7B), a hub id or a folder.")
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.name == "config.json":
            path = path.parent
        return spec_from_folder(path, trust_remote_code=trust_remote_code), None
    why = None
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        spec, why = _from_hub(name, trust_remote_code)
        if spec is not None:
            return spec, None
    entry = find_model(name)
    if entry is not None:
        return _catalog_spec(name.strip(), entry)
    hint = ", ".join(closest_models(name)) or "see `plan models`"
    where = f" ({why})" if why else ""
    raise UserError(f"--model {name}: not a folder, not a known hub model{where}, not in the catalog.",
                    f"Closest catalog names: {hint}.")


def _hub_form(key: str, entry: ModelEntry) -> str | None:
    """The hub id the catalog lists for an org-less name: 'Llama-2-7b-chat' -> 'meta-llama/Llama-2-7b-chat-hf'."""
    if "/" in key:
        return key
    want = key.lower()
    for hub in (entry.hub_id, *entry.aliases):
        if "/" not in hub:
            continue
        base = hub.rsplit("/", 1)[1].lower()
        if base in (want, f"{want}-hf", f"meta-{want}"):
            return hub
    return None


def _catalog_spec(name: str, entry: ModelEntry) -> tuple[ModelSpec, str | None]:
    """The catalog's architecture under the name the user gave.

    A catalog entry holds one architecture for a checkpoint and its variants (-Instruct, -Chat, -it):
    same shape, different weights. The exports must load the checkpoint the user named, so the spec
    keeps that name and its hub id; anything short of an exact catalog name is said, never silent.
    """
    exact = next((k for k in (entry.name, entry.hub_id, *entry.aliases) if k.lower() == name.lower()), None)
    if exact is not None:
        hub_id = _hub_form(exact, entry)
        if hub_id is not None:
            display = hub_id.rsplit("/", 1)[1]
            spec = dataclasses.replace(entry.spec, name=display, hub_id=hub_id)
            if hub_id == entry.hub_id:
                return spec, None
            return spec, (f"--model {name}: {hub_id}, planned with the catalog architecture of {entry.name} "
                          "(the same shape; the exports name the checkpoint you gave)")
        # a nickname of the entry itself (Mistral-7B, Phi-3-mini)
        return entry.spec, (f"--model {name}: the catalog's {entry.name} ({entry.hub_id}); the exports "
                            "name that checkpoint")
    # Matched only after dropping variant suffixes or punctuation: a guess, so say which entry it used.
    if "/" in name:
        spec = dataclasses.replace(entry.spec, name=name.rsplit("/", 1)[1], hub_id=name)
        return spec, (f"--model {name}: not in the catalog and not reachable on the hub; planned with the "
                      f"architecture of the closest catalog entry, {entry.name} ({entry.hub_id}), assuming "
                      "the same shape. The exports name the checkpoint you gave")
    return entry.spec, (f"--model {name}: not a catalog name; planned as the closest entry, {entry.name} "
                        f"({entry.hub_id}), and the exports name that checkpoint. Give the exact hub id "
                        "(org/name) to export another one")
