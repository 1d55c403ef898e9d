"""The model catalog in profiles/models/: known architectures, with tolerant name matching.

    >>> find_model("qwen2.5-7b-instruct").name
    'Qwen2.5-7B'
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from planner.model.spec import ModelSpec

# libyaml's parser is ~10x faster than the pure-Python one; the catalog is read on every run.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader

# Suffixes that name a fine-tuned variant with the base model's architecture.
_VARIANT = re.compile(r"[-_](instruct|chat|base|hf|it|chat-hf|instruct-hf)$")


def normalize(name: str) -> str:
    """Lower-case, drop the org, variant suffixes and punctuation: 'Qwen/Qwen2.5-7B-Instruct' -> 'qwen2.57b'."""
    name = name.strip().lower().rsplit("/", 1)[-1]
    while True:
        stripped = _VARIANT.sub("", name)
        if stripped == name:
            break
        name = stripped
    return re.sub(r"[^a-z0-9.]", "", name)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    hub_id: str
    aliases: tuple[str, ...]
    spec: ModelSpec
    family: str
    file: str


def _yaml_files(folder: str) -> list[tuple[str, str]]:
    root = resources.files("profiles").joinpath(folder)
    return sorted((f"profiles/{folder}/{p.name}", p.read_text(encoding="utf-8"))
                  for p in root.iterdir() if p.name.endswith(".yaml"))


@cache
def load_models() -> tuple[ModelEntry, ...]:
    entries = []
    for where, text in _yaml_files("models"):
        doc = load_yaml(text)
        for raw in doc["models"]:
            spec = ModelSpec.from_config(
                raw["config"], name=raw["name"], hub_id=raw["hub_id"], source="catalog",
                published_params=raw.get("published_params"), where=f"{where} ({raw['name']})",
            )
            if raw.get("vision_params"):  # image-text checkpoints: the tower, counted once (a test checks it)
                spec = dataclasses.replace(spec, vision_params=int(raw["vision_params"]))
            entries.append(ModelEntry(raw["name"], raw["hub_id"], tuple(raw.get("aliases") or ()), spec,
                                      doc.get("family", ""), where))
    return tuple(entries)


@cache
def _model_index() -> dict[str, ModelEntry]:
    index: dict[str, ModelEntry] = {}
    for e in load_models():
        for key in (e.name, e.hub_id, *e.aliases):
            index.setdefault(normalize(key), e)
    return index


def find_model(name: str) -> ModelEntry | None:
    return _model_index().get(normalize(name))


def closest_models(name: str, n: int = 5) -> list[str]:
    names = {normalize(e.name): e.name for e in load_models()}
    hits = difflib.get_close_matches(normalize(name), list(names), n=n, cutoff=0.4)
    return [names[h] for h in hits]
