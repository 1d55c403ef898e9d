"""Device calibration: what a real card adds on top of the live tensors, and which calibration to use.

The analytic memory model predicts live tensor bytes (device independent, checked against the CPU
oracles). A card adds what no tensor accounting sees, fitted from measurements by
benchmarks/calibrate.py and stored in profiles/calibration/<gpu>-<stack>.json:

    allocated = peak_tensor + cublas_workspace + kernel_temp_per_token_hidden x tokens x hidden
    reserved  = allocated x (1 + allocator_slack_ratio) + allocator_slack
    device    = reserved + cuda_context                       (what NVML / nvidia-smi shows)

select_calibration() picks the file for a card: the same card with the nearest software stack, else
the nearest card (same architecture first) with a wider safety margin, and says which it used.

    >>> cal, note, margin = select_calibration(gpu, current_stack())
    >>> cal.overheads.device_bytes(peak_tensor_bytes, tokens=4096, hidden=3584) if cal else None
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from planner.errors import UserError
from planner.hardware.gpu_spec import GpuSpec

FORMAT = 1
# Extra safety margin (fraction of the prediction) when the calibration is not from this card.
MARGIN_STACK_DIFFERS = 0.01  # same card, another torch minor version or allocator setting
MARGIN_SAME_ARCH = 0.03  # another card of the same architecture (compute capability)
MARGIN_NONE = 0.05  # no calibration at all: the memory model's default overheads apply

# Software whose version changes device overheads, with how much a difference weighs.
STACK_WEIGHTS = {"torch": 8.0, "cuda": 4.0, "PYTORCH_CUDA_ALLOC_CONF": 4.0, "transformers": 2.0,
                 "bitsandbytes": 1.0, "peft": 1.0, "liger_kernel": 1.0, "deepspeed": 1.0}
_STACK_PACKAGES = {"torch": "torch", "transformers": "transformers", "peft": "peft",
                   "bitsandbytes": "bitsandbytes", "deepspeed": "deepspeed", "liger_kernel": "liger-kernel"}


@dataclass(frozen=True)
class DeviceOverheads:
    """Device-specific memory on top of the live tensors (see the module docstring for the model)."""

    cuda_context_bytes: int = 0  # CUDA context + module images, outside the allocator (NVML only)
    cublas_workspace_bytes: int = 0  # cuBLAS/cuBLASLt workspaces, inside the allocator
    kernel_temp_bytes_per_token_hidden: float = 0.0  # kernel temporaries per token x hidden unit
    allocator_slack_ratio: float = 0.0  # caching-allocator rounding and fragmentation ...
    allocator_slack_bytes: int = 0  # ... as a fraction of allocated plus a constant ...
    # ... plus what the per-step churn leaves cached: per token x hidden unit (activations) and per token x
    # vocabulary entry when the logits are materialized (optional: absent in older files, read as 0)
    allocator_slack_bytes_per_token_hidden: float = 0.0
    allocator_slack_bytes_per_token_vocab: float = 0.0
    source: str = ""

    def allocated_bytes(self, peak_tensor_bytes: int, *, tokens: int, hidden: int) -> int:
        """Peak torch.cuda.max_memory_allocated() for a step whose live tensors peak at `peak_tensor_bytes`."""
        temp = self.kernel_temp_bytes_per_token_hidden * tokens * hidden
        return int(peak_tensor_bytes + self.cublas_workspace_bytes + temp)

    def reserved_from_allocated(self, allocated_bytes: int, *, tokens: int, hidden: int, vocab: int = 0) -> int:
        """Peak torch.cuda.max_memory_reserved() for a step whose allocator peak is `allocated_bytes`;
        `vocab` is the vocabulary size when the step materializes logits (0 with a fused loss)."""
        churn = (self.allocator_slack_bytes_per_token_hidden * tokens * hidden
                 + self.allocator_slack_bytes_per_token_vocab * tokens * vocab)
        return int(allocated_bytes * (1.0 + self.allocator_slack_ratio) + self.allocator_slack_bytes + churn)

    def reserved_bytes(self, peak_tensor_bytes: int, *, tokens: int, hidden: int, vocab: int = 0) -> int:
        allocated = self.allocated_bytes(peak_tensor_bytes, tokens=tokens, hidden=hidden)
        return self.reserved_from_allocated(allocated, tokens=tokens, hidden=hidden, vocab=vocab)

    def device_bytes(self, peak_tensor_bytes: int, *, tokens: int, hidden: int, vocab: int = 0) -> int:
        """What the card must hold: reserved + CUDA context (the NVML peak)."""
        return self.reserved_bytes(peak_tensor_bytes, tokens=tokens, hidden=hidden, vocab=vocab) + self.cuda_context_bytes

    def to_json(self) -> dict[str, Any]:
        return {"cuda_context_bytes": self.cuda_context_bytes, "cublas_workspace_bytes": self.cublas_workspace_bytes,
                "kernel_temp_bytes_per_token_hidden": self.kernel_temp_bytes_per_token_hidden,
                "allocator_slack_ratio": self.allocator_slack_ratio,
                "allocator_slack_bytes": self.allocator_slack_bytes,
                "allocator_slack_bytes_per_token_hidden": self.allocator_slack_bytes_per_token_hidden,
                "allocator_slack_bytes_per_token_vocab": self.allocator_slack_bytes_per_token_vocab}

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "") -> DeviceOverheads:
        return cls(cuda_context_bytes=int(d.get("cuda_context_bytes", 0)),
                   cublas_workspace_bytes=int(d.get("cublas_workspace_bytes", 0)),
                   kernel_temp_bytes_per_token_hidden=float(d.get("kernel_temp_bytes_per_token_hidden", 0.0)),
                   allocator_slack_ratio=float(d.get("allocator_slack_ratio", 0.0)),
                   allocator_slack_bytes=int(d.get("allocator_slack_bytes", 0)),
                   allocator_slack_bytes_per_token_hidden=float(d.get("allocator_slack_bytes_per_token_hidden", 0.0)),
                   allocator_slack_bytes_per_token_vocab=float(d.get("allocator_slack_bytes_per_token_vocab", 0.0)),
                   source=source)


@dataclass(frozen=True)
class CalibrationFile:
    """One calibration document: the card, the stack, the fitted constants and the raw measurements."""

    gpu: dict[str, Any]  # name (as NVML reports it), memory_bytes, compute_capability, driver
    stack: dict[str, Any]  # torch, cuda, transformers, peft, bitsandbytes, deepspeed, liger_kernel, ...
    fitted: dict[str, Any]  # DeviceOverheads fields
    fit_quality: dict[str, Any] = field(default_factory=dict)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""
    path: str = ""  # where it was read from ("" when built in memory)

    @property
    def gpu_name(self) -> str:
        return str(self.gpu.get("name", ""))

    @property
    def overheads(self) -> DeviceOverheads:
        return DeviceOverheads.from_json(self.fitted, source=self.describe())

    def describe(self) -> str:
        torch_v = self.stack.get("torch", "?")
        where = f" ({self.path})" if self.path else ""
        return f"{self.gpu_name}, torch {torch_v}{where}"

    def slug(self) -> str:
        """<gpu>-<stack> file stem: 'nvidia-h100-80gb-hbm3-torch2.11-cuda13.0'."""
        return calibration_slug(self.gpu_name, self.stack)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "gpu": self.gpu, "stack": self.stack, "fitted": self.fitted,
                "fit_quality": self.fit_quality, "created": self.created, "measurements": self.measurements}

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, doc: dict[str, Any], *, path: str = "") -> CalibrationFile:
        where = path or "calibration"
        for key in ("gpu", "stack", "fitted"):
            if not isinstance(doc.get(key), dict):
                raise UserError(f"{where}: missing the {key!r} object of a calibration file.",
                                "See profiles/calibration/README.md for the format.")
        if not doc["gpu"].get("name"):
            raise UserError(f"{where}: gpu.name is missing.", "See profiles/calibration/README.md.")
        return cls(gpu=doc["gpu"], stack=doc["stack"], fitted=doc["fitted"],
                   fit_quality=doc.get("fit_quality") or {}, measurements=list(doc.get("measurements") or []),
                   created=str(doc.get("created", "")), path=path)


# What select_calibration returns: the chosen file (its .overheads feed the memory model).
Calibration = CalibrationFile


def calibration_slug(gpu_name: str, stack: dict[str, Any]) -> str:
    def clean(s: str) -> str:
        return re.sub(r"[^a-z0-9.]+", "-", s.lower()).strip("-")

    torch_v = ".".join(str(stack.get("torch", "unknown")).split("+")[0].split(".")[:2])
    parts = [clean(gpu_name), f"torch{torch_v}"]
    if stack.get("cuda"):
        parts.append(f"cuda{stack['cuda']}")
    if stack.get("PYTORCH_CUDA_ALLOC_CONF"):
        parts.append(clean(str(stack["PYTORCH_CUDA_ALLOC_CONF"])).replace(":", "-"))
    return "-".join(clean(p) for p in parts)


def user_calibration_dir() -> Path:
    """Calibrations made on this machine (`plan calibrate`): $VRAMPLAN_HOME/calibration."""
    home = os.environ.get("VRAMPLAN_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".local" / "share" / "vramplan"
    return base / "calibration"


def _read(path_text: str, text: str) -> CalibrationFile:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path_text}:{e.lineno}: not valid JSON ({e.msg}).",
                        "Re-run benchmarks/calibrate.py or `plan calibrate` to write it again.") from e
    return CalibrationFile.from_json(doc, path=path_text)


@cache
def shipped_calibrations() -> tuple[CalibrationFile, ...]:
    """profiles/calibration/*.json (measured on named cards; committed with the project)."""
    root = resources.files("profiles").joinpath("calibration")
    if not root.is_dir():
        return ()
    return tuple(_read(f"profiles/calibration/{p.name}", p.read_text(encoding="utf-8"))
                 for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".json"))


def user_calibrations(folder: Path | None = None) -> tuple[CalibrationFile, ...]:
    folder = folder or user_calibration_dir()
    if not folder.is_dir():
        return ()
    return tuple(_read(str(p), p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json")))


def load_calibrations() -> tuple[CalibrationFile, ...]:
    """This machine's calibrations first, then the shipped ones."""
    return user_calibrations() + shipped_calibrations()


def current_stack() -> dict[str, Any]:
    """Versions of the installed training stack, read from package metadata (nothing is imported)."""
    out: dict[str, Any] = {}
    for key, dist in _STACK_PACKAGES.items():
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    out["PYTORCH_CUDA_ALLOC_CONF"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or None
    return out


# -- selection -------------------------------------------------------------------------------------------
def card_key(name: str) -> str:
    """Canonical card name: the catalog's when it knows the card, else the name reduced to [a-z0-9]."""
    try:
        from planner.hardware.catalog import find_gpu

        entry = find_gpu(name)
        if entry is not None:
            return entry.spec.name.lower()
    except (OSError, UserError):  # no GPU catalog: fall back to the bare name
        pass
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for prefix in ("nvidia", "geforce", "tesla"):
        key = key.removeprefix(prefix)
    return key


def _version_tuple(v: Any) -> tuple[int, ...]:
    nums = re.findall(r"\d+", str(v).split("+")[0])
    return tuple(int(n) for n in nums[:3])


def version_distance(a: Any, b: Any) -> float:
    """0 equal; 0.1 per patch release; 0.5 + 0.1 x |minor gap| (at most 1) for another minor; 1 another major."""
    if a is None and b is None:
        return 0.0
    if a is None or b is None:
        return 0.5
    if not _version_tuple(a) or not _version_tuple(b):
        return 0.0 if str(a) == str(b) else 1.0
    ta, tb = (_version_tuple(x) + (0, 0, 0) for x in (a, b))
    if ta[0] != tb[0]:
        return 1.0
    if ta[1] != tb[1]:
        return min(1.0, 0.5 + 0.1 * abs(ta[1] - tb[1]))
    return 0.0 if ta[2] == tb[2] else 0.1


def stack_distance(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float:
    """Weighted sum of version distances over STACK_WEIGHTS (unknown on either side counts 0)."""
    if not a or not b:
        return 0.0
    total = 0.0
    for key, weight in STACK_WEIGHTS.items():
        if key not in a or key not in b:
            continue
        if key == "PYTORCH_CUDA_ALLOC_CONF":
            total += weight * (0.0 if (a[key] or None) == (b[key] or None) else 1.0)
        else:
            total += weight * version_distance(a[key], b[key])
    return total


def _cc(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def select_calibration(gpu: GpuSpec, stack: dict[str, Any] | None = None,
                       candidates: tuple[CalibrationFile, ...] | None = None
                       ) -> tuple[Calibration | None, str, float]:
    """(calibration, note, extra_margin) for planning on `gpu` with `stack`.

    Same card: the one with the nearest stack (this machine's own calibrations win ties), margin 0,
    or +1% when torch's minor version or the allocator setting differs. Another card of the same
    architecture (compute capability): the nearest memory size, +3%. Another architecture gets none:
    its CUDA context, kernels and workspaces differ, and one card's fitted slack lent to it made every
    RTX 4090 plan carry the H200's 20% evidence margin; the memory model's sourced defaults apply.
    """
    if gpu.is_cpu:
        return None, "CPU: no device overheads (host RAM holds the tensors only).", 0.0
    pool = load_calibrations() if candidates is None else candidates
    if not pool:
        return None, (f"no calibration available: device overheads for {gpu.name} use the memory model's "
                      f"defaults (+{MARGIN_NONE:.0%} margin)."), MARGIN_NONE
    key = card_key(gpu.name)
    same = [c for c in pool if card_key(c.gpu_name) == key]
    if same:
        best = min(same, key=lambda c: stack_distance(c.stack, stack))  # min keeps the first (user) on ties
        dist = stack_distance(best.stack, stack)
        margin = MARGIN_STACK_DIFFERS if dist >= STACK_WEIGHTS["PYTORCH_CUDA_ALLOC_CONF"] else 0.0
        note = f"calibration: {best.describe()}"
        if margin:
            note += f"; its software stack differs from this one (+{margin:.0%} margin)"
        return best, note, margin

    vendor = [c for c in pool if str(c.gpu.get("vendor", "nvidia")) == gpu.vendor]
    if not vendor:
        return None, (f"no calibration for {gpu.vendor} cards: device overheads use the memory model's "
                      f"defaults (+{MARGIN_NONE:.0%} margin)."), MARGIN_NONE
    cc = _cc(gpu.compute_capability)

    def rank(c: CalibrationFile) -> tuple[int, float, float]:
        same_arch = cc is not None and _cc(c.gpu.get("compute_capability")) == cc
        mem = float(c.gpu.get("memory_bytes") or 0)
        mem_gap = abs(mem - gpu.memory_bytes) / max(gpu.memory_bytes, 1) if mem else 1.0
        return (0 if same_arch else 1, mem_gap, stack_distance(c.stack, stack))

    best = min(vendor, key=rank)
    if rank(best)[0] != 0:
        return None, (f"no calibration for {gpu.name}'s architecture: device overheads use the memory model's "
                      f"defaults (+{MARGIN_NONE:.0%} margin)."), MARGIN_NONE
    margin = MARGIN_SAME_ARCH
    return best, (f"no calibration for {gpu.name}; using {best.describe()} (same architecture, "
                  f"+{margin:.0%} margin)"), margin
