"""plan.yaml: a plan as a file, so `plan --apply DIR/plan.yaml` trains exactly what was planned.

    vramplan_version: 0.1.0
    model: {name: Qwen2.5-0.5B, path: /models/qwen, hub_id: Qwen/Qwen2.5-0.5B}
    gpu: {name: RTX4090, count: 1, nodes: 1}
    config: {finetuning_type: lora, lora_rank: 16, cutoff_len: 1024, ...}   # TrainConfig fields
    data: {dataset: my.json, template: qwen}          # or {synthetic: {samples: 64, length: 512}}
    training: {learning_rate: 1.0e-4, num_train_epochs: 1.0, save_steps: 500, seed: 42}

    >>> plan = PlanFile.load("runs/a/plan.yaml")
    >>> plan.train_config().lora_rank
    16

Torch-free: the CLI reads and writes plans without importing the runner.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from planner import __version__
from planner.errors import UserError
from planner.hardware.gpu_spec import GpuSetup
from planner.model.spec import ModelSpec
from planner.search.hparams import DEFAULT_EPOCHS
from planner.train_config import TrainConfig

# Run-length and optimizer settings that are not memory decisions (HF TrainingArguments names).
TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 1e-4,
    "num_train_epochs": DEFAULT_EPOCHS,  # what the plan shows without data (planner.search.hparams)
    "max_steps": None,  # None: train num_train_epochs
    "save_steps": 500,
    "logging_steps": 1,
    "eval_ratio": 0.0,  # share of the samples held out for an eval loss curve (0 = none)
    "seed": 42,
    "init": "pretrained",  # pretrained | random (weights built from the config: measurement runs)
}

_SYNTHETIC = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_synthetic(text: str, *, flag: str = "--synthetic-data") -> tuple[int, int]:
    """"64:512" -> (64 samples, 512 tokens each)."""
    m = _SYNTHETIC.match(text or "")
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 2:
        raise UserError(f"{flag} {text}: expected N:LEN with N >= 1 samples of LEN >= 2 tokens.",
                        f"Example: {flag} 64:512")
    return int(m.group(1)), int(m.group(2))


def _pinned(value: str, base: Path) -> str:
    """One path-like data value made absolute against `base` when it names something that exists there."""
    if value == "demo" or not value:
        return value
    head, sep, names = value.rpartition(":")
    if sep and Path(head).name == "dataset_info.json":  # path/dataset_info.json:NAME
        return f"{_pinned(head, base)}:{names}"
    path = Path(value).expanduser()
    full = path if path.is_absolute() else base / path
    if any(ch in value for ch in "*?["):  # a glob: anchor it, keep the pattern
        return str(full) if not path.is_absolute() else value
    return str(full.resolve()) if full.exists() else value


def pin_data_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """plan.data with every file, folder and glob made absolute against `base`, so the plan reads the
    same data from any working directory. Names that are not paths (demo, built-in templates) stay."""
    out = dict(data)
    for key in ("data", "tokenizer", "dataset_dir", "template"):
        value = out.get(key)
        if isinstance(value, str):
            out[key] = _pinned(value, base)
        elif isinstance(value, (list, tuple)):
            out[key] = [_pinned(v, base) if isinstance(v, str) else v for v in value]
    if out.get("dataset") and not out.get("dataset_dir") and (base / "data").is_dir():
        out["dataset_dir"] = str((base / "data").resolve())  # the loaders' default folder, pinned
    return out


def _train_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(TrainConfig)}


def _coerce(value: Any, default: Any, where: str) -> Any:
    """A YAML scalar -> the type of the TrainConfig default (tuples from comma strings)."""
    if isinstance(default, tuple):
        if isinstance(value, str):
            return tuple(x.strip() for x in value.split(",") if x.strip())
        if isinstance(value, list):
            return tuple(str(x) for x in value)
    elif isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif default is None:  # Optional fields: None or a scalar
        if value is None or isinstance(value, (str, int, float)):
            return value
    else:
        return value
    raise UserError(f"{where}: {value!r} is not a valid value (expected {type(default).__name__}).")


def train_config_from_dict(raw: dict, *, where: str) -> TrainConfig:
    """The `config:` section -> TrainConfig; unknown keys are errors that name the key and the file."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: `config` must be a mapping of TrainConfig fields.")
    known = _train_fields()
    values = {}
    for key, value in raw.items():
        if key == "method":  # written for people by TrainConfig.to_json; derived, not a field
            continue
        if key not in known:
            close = ", ".join(sorted(k for k in known if k[:4] == str(key)[:4])) or "see TrainConfig"
            raise UserError(f"{where}: config.{key} is not a training setting.", f"Known settings: {close}.")
        default = known[key].default
        if value is None and default is not None:
            raise UserError(f"{where}: config.{key} must not be empty.")
        values[key] = _coerce(value, default, f"{where}: config.{key}")
    return TrainConfig(**values)


@dataclass(frozen=True)
class PlanFile:
    """What `plan --apply` needs: the model, the hardware, the training config and the data."""

    model: dict[str, Any]  # name, and path (a folder) and/or hub_id when known
    gpu: dict[str, Any]  # name (catalog card, "24GB" or "cpu"), count (per node), nodes
    config: TrainConfig
    data: dict[str, Any] = field(default_factory=dict)  # the data request, or {"synthetic": {...}}
    training: dict[str, Any] = field(default_factory=lambda: dict(TRAINING_DEFAULTS))
    vramplan_version: str = __version__
    predicted: dict[str, Any] | None = None  # the planner's memory prediction, for the record
    where: str = "plan"  # the file it came from, for error messages

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def from_values(cls, spec: ModelSpec, train: TrainConfig, setup: GpuSetup, *,
                    data: dict[str, Any] | None = None, training: dict[str, Any] | None = None,
                    predicted: dict[str, Any] | None = None) -> PlanFile:
        """A plan from the planner's values (what `plan ... --apply` trains right away)."""
        model: dict[str, Any] = {"name": spec.name}
        if spec.source_dir is not None and spec.source != "hub":
            model["path"] = str(Path(spec.source_dir).resolve())
        if spec.hub_id:
            model["hub_id"] = spec.hub_id
        gpu_name = "cpu" if setup.gpu.is_cpu else setup.gpu.name
        if setup.gpu.vendor == "generic" and gpu_name.endswith("GB card"):
            gpu_name = gpu_name[: -len(" card")]  # "24GB card" -> "24GB", which --gpu parses back
        gpu = {"name": gpu_name, "count": setup.count, "nodes": setup.nodes,
               "memory_bytes": setup.gpu.memory_bytes}
        return cls(model=model, gpu=gpu, config=train, data=dict(data or {}),
                   training={**TRAINING_DEFAULTS, **(training or {})}, predicted=predicted)

    @classmethod
    def from_dict(cls, raw: Any, *, where: str = "plan") -> PlanFile:
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected a mapping with model, gpu, config (a vramplan plan.yaml).")
        missing = [k for k in ("model", "gpu", "config") if k not in raw]
        if missing:
            raise UserError(f"{where}: missing {', '.join(missing)}.",
                            "Write plans with `plan ... --format yaml` or take one from a run's output folder.")
        model = raw["model"]
        if isinstance(model, str):
            model = {"name": model}
        if not isinstance(model, dict) or not (model.get("name") or model.get("path") or model.get("hub_id")):
            raise UserError(f"{where}: model needs a name, path or hub_id.")
        gpu = raw["gpu"]
        if isinstance(gpu, str):
            gpu = {"name": gpu}
        if not isinstance(gpu, dict) or not gpu.get("name"):
            raise UserError(f"{where}: gpu needs a name (a catalog card, a size like 24GB, or cpu).")
        for key in ("count", "nodes"):
            value = gpu.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{where}: gpu.{key} must be a whole number >= 1 (got {value!r}).")
        data = raw.get("data") or {}
        if not isinstance(data, dict):
            raise UserError(f"{where}: data must be a mapping (dataset/format/template, or synthetic).")
        training = raw.get("training") or {}
        unknown = sorted(set(training) - set(TRAINING_DEFAULTS))
        if unknown:
            raise UserError(f"{where}: training.{unknown[0]} is not a run setting.",
                            f"Known: {', '.join(TRAINING_DEFAULTS)}.")
        return cls(model=dict(model), gpu={"count": 1, "nodes": 1, **gpu},
                   config=train_config_from_dict(raw["config"], where=where), data=dict(data),
                   training={**TRAINING_DEFAULTS, **training},
                   vramplan_version=str(raw.get("vramplan_version", __version__)),
                   predicted=raw.get("predicted"), where=where)

    @classmethod
    def load(cls, path: str | Path) -> PlanFile:
        path = Path(path)
        if path.is_dir():
            path = path / "plan.yaml"
        if not path.is_file():
            raise UserError(f"--apply {path}: no such plan file.",
                            "Give the plan.yaml a previous `plan --apply` wrote into its --out folder.")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise UserError(f"{path}{line}: invalid YAML ({getattr(exc, 'problem', exc)}).") from None
        plan = cls.from_dict(raw, where=str(path))
        # Relative data paths are read from the plan's folder first (a plan written by hand, or moved
        # together with its data), then from the working directory.
        return plan.with_(data=pin_data_paths(plan.data, path.parent))

    # -- writing ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        config = self.config.to_json()
        config.pop("method", None)
        out: dict[str, Any] = {"vramplan_version": self.vramplan_version, "model": dict(self.model),
                               "gpu": dict(self.gpu), "config": config, "data": dict(self.data),
                               "training": dict(self.training)}
        if self.predicted is not None:
            out["predicted"] = self.predicted
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path

    def with_(self, **changes) -> PlanFile:
        return dataclasses.replace(self, **changes)

    # -- resolving --------------------------------------------------------------------------------
    def train_config(self) -> TrainConfig:
        return self.config

    def check_data_paths(self) -> None:
        """UserError naming this plan file when a data file or folder it lists is not here."""
        items = self.data.get("data") or []
        for item in [items] if isinstance(items, str) else items:
            if not isinstance(item, str) or item == "demo" or any(ch in item for ch in "*?["):
                continue
            head, sep, _ = item.rpartition(":")
            path = Path(head if sep and Path(head).name == "dataset_info.json" else item).expanduser()
            if not path.exists():
                raise UserError(f"{self.where}: data.data {item}: no such file or folder (read from "
                                f"{Path.cwd()}).", "Fix the path in the plan file, or pass --synthetic-data "
                                "N:LEN to measure without the data.")

    @property
    def synthetic(self) -> tuple[int, int] | None:
        """(samples, length) when the plan trains on random token ids instead of a dataset."""
        syn = self.data.get("synthetic")
        if syn is None:
            return None
        if isinstance(syn, str):
            return parse_synthetic(syn, flag=f"{self.where}: data.synthetic")
        try:
            return int(syn["samples"]), int(syn["length"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{self.where}: data.synthetic needs samples and length (or 'N:LEN').") from None

    def model_spec(self) -> ModelSpec:
        """The ModelSpec: the folder when it exists here, else the hub id (cache), else the name."""
        from planner.model.resolve import resolve_model, spec_from_folder

        path = self.model.get("path")
        if path and Path(path).expanduser().is_dir():
            return spec_from_folder(Path(path).expanduser(), hub_id=self.model.get("hub_id"))
        for key in ("hub_id", "name"):
            if self.model.get(key):
                return resolve_model(str(self.model[key]))
        raise UserError(f"{self.where}: model.path {path} does not exist here and the plan names no hub_id.")

    def gpu_setup(self) -> GpuSetup:
        """The GpuSetup the plan is for. Several CPU processes are allowed (DDP over gloo)."""
        from planner.hardware.gpus import cpu_spec, host_ram_bytes, resolve_setup

        name, count, nodes = str(self.gpu["name"]), int(self.gpu["count"]), int(self.gpu["nodes"])
        if name.lower() == "cpu":
            return GpuSetup(cpu_spec(), count=count, nodes=nodes, host_ram_bytes=host_ram_bytes())
        return resolve_setup(name, gpus=count, nodes=nodes)
