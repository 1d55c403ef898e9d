"""Calibration in the loop: which calibration a plan uses, with what margin, and the estimator built on it.

`plan` picks the calibration for the card and the software stack the run will use (this machine's own
from `plan calibrate --from-log` first, then profiles/calibration; planner.hardware.calibration.select_calibration),
plans with its overheads, and derives the safety margin from its evidence: the fit's own worst
under-prediction plus a term for what was not measured that shrinks as 1/sqrt(measurements). A file that
cannot be read, or one given with --calibration for another card, is ignored with one warning naming it.

    >>> choice = choose_calibration(setup.gpu)
    >>> choice.note, choice.margin
    ('calibration: NVIDIA H200, torch 2.11.0+cu130 (profiles/calibration/nvidia-h200-...json)', 0.115)
    >>> search(spec, setup, data, margin=choice.margin, estimator=choice.estimator())
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache, partial
from importlib import resources
from pathlib import Path
from typing import Any

from planner.errors import UserError
from planner.hardware.calibration import (
    MARGIN_NONE,
    CalibrationFile,
    card_key,
    current_stack,
    select_calibration,
    user_calibration_dir,
)
from planner.hardware.gpu_spec import GpuSpec

# margin = |the fit's worst under-prediction| + UNSEEN / sqrt(n), within [MIN, MAX]: 24 measurements with
# a 1% worst miss give 2%; 7 with a 9.6% miss give 11.5%.
MARGIN_UNSEEN = 0.05
MARGIN_MIN = 0.02
MARGIN_MAX = 0.20


@dataclass(frozen=True)
class CalibrationChoice:
    calibration: CalibrationFile | None
    note: str  # which calibration, or why none
    margin: float  # the safety margin to plan with (before --margin overrides it)
    margin_why: str
    warnings: tuple[str, ...] = ()

    def estimator(self):
        """The memory estimator with this calibration's overheads (the default one without)."""
        from planner.memory import estimate_memory

        if self.calibration is None:
            return estimate_memory
        return partial(estimate_memory, overheads=self.calibration.overheads)

    def to_json(self) -> dict[str, Any]:
        cal = self.calibration
        return {"file": cal.path if cal else None, "gpu": cal.gpu_name if cal else None,
                "stack": dict(cal.stack) if cal else None, "fitted": dict(cal.fitted) if cal else None,
                "note": self.note, "margin": self.margin, "margin_why": self.margin_why,
                "warnings": list(self.warnings)}


def evidence_margin(cal: CalibrationFile) -> tuple[float, str]:
    """The margin a calibration's own evidence supports (shrinks as its measurements grow)."""
    q = cal.fit_quality or {}
    n = int(q.get("n") or 0)
    if n < 1:
        return MARGIN_NONE, f"{MARGIN_NONE:.0%}: the calibration records no fit quality"
    worst = abs(min(0.0, float(q.get("worst_under") or 0.0)))
    raw = worst + MARGIN_UNSEEN / math.sqrt(n)
    margin = round(min(MARGIN_MAX, max(MARGIN_MIN, raw)), 4)
    return margin, (f"{margin:.1%} from the calibration's evidence: its worst under-prediction {worst:.1%} + "
                    f"{MARGIN_UNSEEN:.0%}/sqrt({n} measurements)")


def _read(path: str, text: str) -> CalibrationFile:
    """The calibration in `text`; UserError with the reason (without the path) when it is not one."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(doc, dict):
        raise UserError("not a calibration object")
    try:
        cal = CalibrationFile.from_json(doc, path=path)
    except UserError as e:
        raise UserError(e.message.removeprefix(f"{path}: ")) from None
    try:  # the numbers must be numbers
        cal.overheads  # noqa: B018
    except (TypeError, ValueError) as e:
        raise UserError(f"fitted values are not numbers ({e})") from None
    return cal


def shipped_root():
    """profiles/calibration (committed calibrations of named cards)."""
    return resources.files("profiles").joinpath("calibration")


# parsed files by (name shown, stat): a sweep or a test plans many times in one process
_PARSED: dict[tuple[str, Any], CalibrationFile | UserError] = {}


def _parsed(shown: str, path) -> CalibrationFile | UserError:
    try:
        st = path.stat()
        key = (shown, (st.st_mtime_ns, st.st_size))
    except (AttributeError, OSError):  # a resource without stat(): no cache
        key = None
    hit = _PARSED.get(key) if key else None
    if hit is None:
        try:
            hit = _read(shown, path.read_text(encoding="utf-8", errors="replace"))
        except UserError as e:
            hit = e
        if key:
            _PARSED[key] = hit
    return hit


def _load_all(warnings: list[str]) -> tuple[CalibrationFile, ...]:
    """This machine's calibrations, then the shipped ones; unreadable files skipped with a warning."""
    found: list[tuple[str, Any]] = []
    folder = user_calibration_dir()
    if folder.is_dir():
        found += [(str(p), p) for p in sorted(folder.glob("*.json"))]
    root = shipped_root()
    if root.is_dir():
        found += [(f"profiles/calibration/{p.name}", p)
                  for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".json")]
    out = []
    for shown, path in found:
        got = _parsed(shown, path)
        if isinstance(got, UserError):
            warnings.append(f"calibration {shown} ignored: {got.message}")
        else:
            out.append(got)
    return tuple(out)


def run_stack() -> dict[str, Any]:
    """The stack a run launched by vramplan will have: this machine's packages, and the allocator setting
    the runner applies (expandable segments unless PYTORCH_CUDA_ALLOC_CONF is set)."""
    from planner.memory.overheads import ALLOC_CONF

    return dict(_stack(os.environ.get(ALLOC_CONF)))


@lru_cache(maxsize=8)
def _stack(alloc_conf: str | None) -> tuple[tuple[str, Any], ...]:
    from planner.memory.overheads import ALLOC_CONF, EXPANDABLE

    stack = current_stack()  # package metadata: ~10 ms, once per process
    stack[ALLOC_CONF] = alloc_conf or EXPANDABLE
    return tuple(stack.items())


def choose_calibration(gpu: GpuSpec, *, explicit: str | Path | None = None) -> CalibrationChoice:
    """The calibration, note, margin and warnings for planning on `gpu`."""
    if gpu.is_cpu:
        return CalibrationChoice(None, "CPU: no device overheads", MARGIN_NONE,
                                 f"{MARGIN_NONE:.0%}: the memory model's error before any calibration")
    warnings: list[str] = []
    if explicit is not None:
        path = Path(explicit).expanduser()
        try:
            if not path.is_file():
                raise UserError("no such file")
            cal = _read(str(path), path.read_text(encoding="utf-8", errors="replace"))
        except UserError as e:
            warnings.append(f"--calibration {explicit} ignored: {e.message}")
        else:
            if card_key(cal.gpu_name) == card_key(gpu.name):
                margin, why = evidence_margin(cal)
                return CalibrationChoice(cal, f"calibration: {cal.describe()} (--calibration)", margin, why)
            warnings.append(f"--calibration {explicit} ignored: it measures {cal.gpu_name}, the plan is for "
                            f"{gpu.name}")
    pool = _load_all(warnings)
    cal, note, extra = select_calibration(gpu, run_stack(), candidates=pool)
    if cal is None:
        return CalibrationChoice(None, note, MARGIN_NONE,
                                 f"{MARGIN_NONE:.0%}: the memory model's error before a calibration for this card",
                                 tuple(warnings))
    margin, why = evidence_margin(cal)
    if extra:
        margin = round(min(MARGIN_MAX, margin + extra), 4)
        why = f"{why}, +{extra:.0%}: the calibration is not from this exact card and software stack"
    return CalibrationChoice(cal, note, margin, why, tuple(warnings))
