"""The GPU catalog in profiles/gpus.yaml: cards and their aliases, with tolerant name matching.

    >>> find_gpu("NVIDIA H100 80GB HBM3").spec.name
    'H100-SXM-80G'
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from planner.errors import UserError
from planner.hardware.gpu_spec import GpuSpec
from planner.model.catalog import load_yaml


@dataclass(frozen=True)
class GpuEntry:
    spec: GpuSpec
    aliases: tuple[str, ...]
    nvml_names: tuple[str, ...]
    default: bool


@cache
def load_gpus() -> tuple[GpuEntry, ...]:
    out = []
    text = resources.files("profiles").joinpath("gpus.yaml").read_text(encoding="utf-8")
    for raw in load_yaml(text)["gpus"]:
        spec = GpuSpec(
            name=raw["name"], memory_bytes=int(raw["memory_bytes"]), vendor=raw.get("vendor", "nvidia"),
            bf16=bool(raw.get("bf16", True)), fp8=bool(raw.get("fp8", False)),
            bf16_tflops=float(raw.get("bf16_tflops") or raw.get("fp16_tflops") or 0.0),
            bandwidth_gbs=float(raw.get("bandwidth_gbs") or 0.0),
            compute_capability=str(raw["compute_capability"]) if raw.get("compute_capability") else None,
            source=raw.get("source", ""),
        )
        out.append(GpuEntry(spec, tuple(raw.get("aliases") or ()), tuple(raw.get("nvml_names") or ()),
                            bool(raw.get("default", False))))
    return tuple(out)


def _gpu_key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for prefix in ("nvidia", "geforce", "tesla", "amd", "instinct"):
        key = key.removeprefix(prefix)
    return key.replace("rtx", "").replace("gb", "g")


@cache
def _gpu_index() -> dict[str, GpuEntry]:
    index: dict[str, GpuEntry] = {}
    for e in load_gpus():
        for key in (e.spec.name, *e.aliases, *e.nvml_names):
            index.setdefault(_gpu_key(key), e)
    return index


def find_gpu(name: str) -> GpuEntry | None:
    return _gpu_index().get(_gpu_key(name))


def default_gpu() -> GpuEntry:
    for e in load_gpus():
        if e.default:
            return e
    raise UserError("profiles/gpus.yaml: no card is marked `default: true`.")


def closest_gpus(name: str, n: int = 5) -> list[str]:
    names = {_gpu_key(e.spec.name): e.spec.name for e in load_gpus()}
    keys = difflib.get_close_matches(_gpu_key(name), list(names), n=n, cutoff=0.3)
    return [names[k] for k in keys]
