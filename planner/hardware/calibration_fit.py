"""Fit DeviceOverheads to measurements, and refine a calibration from `plan --apply` run logs.

Three small least-squares problems, one per layer of the device model (planner.hardware.calibration):

    allocated - predicted tensors = cublas_workspace + kernel_temp x tokens x hidden
    reserved  - allocated         = slack_ratio x allocated + slack + slack_vocab x tokens x vocab
    device    - reserved          = cuda_context

Pure Python (no numpy in the planner); each problem has at most two unknowns.

    >>> overheads, quality = fit_overheads(points)
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from planner.errors import UserError
from planner.hardware.calibration import CalibrationFile, DeviceOverheads, card_key, load_calibrations


@dataclass(frozen=True)
class FitPoint:
    """One measured configuration with the analytic model's prediction for it."""

    name: str
    predicted_tensor_bytes: int  # planner.memory peak_tensor_bytes (device independent)
    tokens: int  # per_device_train_batch_size x sequence length
    hidden_size: int
    allocated_bytes: int  # peak torch.cuda.max_memory_allocated over the training phases
    reserved_bytes: int  # peak torch.cuda.max_memory_reserved
    device_bytes: int | None = None  # NVML peak used minus the card's usage before the run
    vocab: int = 0  # vocabulary size when the step materializes logits (0 with a fused loss, or unknown)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def lstsq(rows: list[list[float]], y: list[float]) -> list[float]:
    """Least squares by the normal equations (Gauss-Jordan with pivoting); fine for <= 3 unknowns.

    Columns are scaled to unit RMS first so byte-sized and ratio-sized features mix safely.
    """
    n = len(rows[0])
    scale = [max((sum(r[j] ** 2 for r in rows) / len(rows)) ** 0.5, 1e-30) for j in range(n)]
    xs = [[r[j] / scale[j] for j in range(n)] for r in rows]
    a = [[sum(x[i] * x[j] for x in xs) for j in range(n)] + [sum(x[i] * t for x, t in zip(xs, y, strict=True))]
         for i in range(n)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[piv][col]) < 1e-12:
            raise ValueError("singular least-squares system (features are collinear)")
        a[col], a[piv] = a[piv], a[col]
        for r in range(n):
            if r != col:
                f = a[r][col] / a[col][col]
                a[r] = [v - f * w for v, w in zip(a[r], a[col], strict=True)]
    return [a[i][n] / a[i][i] / scale[i] for i in range(n)]


def _fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of y = intercept + slope x; slope 0 when x does not vary."""
    if len(set(xs)) < 2:
        return statistics.fmean(ys), 0.0
    c, k = lstsq([[1.0, x] for x in xs], ys)
    return c, k


def _nonnegative_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(intercept, slope) of a least-squares line with neither below zero: a negative constant slack
    under-predicts every small run (seen on the H200 fit: -0.66 GiB, small cases 18% low)."""
    c, k = _fit_line(xs, ys)
    if c < 0:  # through the origin
        sxx = sum(x * x for x in xs)
        c, k = 0.0, (sum(x * y for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0)
    if k < 0:
        c, k = statistics.fmean(ys), 0.0
    return max(c, 0.0), k


def _sse(xs: list[float], ys: list[float], c: float, k: float) -> float:
    return sum((y - c - k * x) ** 2 for x, y in zip(xs, ys, strict=True))


def fit_overheads(points: list[FitPoint]) -> tuple[DeviceOverheads, dict[str, Any]]:
    """Fit the device constants; the quality dict reports the device-peak error of the fit itself."""
    if len(points) < 3:
        raise UserError(f"calibration needs at least 3 successful measurements, got {len(points)}.",
                        "Run more configurations (benchmarks/calibrate.py) or more `plan --apply` runs.")
    # Points the tensor model misses by more than 15% are a gap of that model (reported by the accuracy
    # benchmark), not a device constant: they are left out of the fit and named in its quality.
    good = [p for p in points if abs(p.allocated_bytes - p.predicted_tensor_bytes) <= 0.15 * p.predicted_tensor_bytes]
    left_out = [p.name for p in points if p not in good] if len(good) >= 3 else []
    if left_out:
        points = good
    # 1. what the allocator saw beyond the live tensors: workspaces (constant) + kernel temporaries
    th = [float(p.tokens * p.hidden_size) for p in points]
    extra = [float(p.allocated_bytes - p.predicted_tensor_bytes) for p in points]
    workspace, temp = _fit_line(th, extra)
    if temp < 0:  # temporaries cannot be negative: a constant workspace alone
        workspace, temp = statistics.fmean(extra), 0.0
    # 2. caching-allocator slack: a line in the allocated bytes, or in tokens x vocab (the fp32 logits),
    # whichever leaves the smaller residual. On an H200 it followed the logits rather than the allocated
    # total (benchmarks/results/gpu-session-h200-141g.md).
    alloc = [float(p.allocated_bytes) for p in points]
    slack = [float(p.reserved_bytes - p.allocated_bytes) for p in points]
    tv = [float(p.tokens * p.vocab) for p in points]
    slack_bytes, slack_ratio = _nonnegative_line(alloc, slack)
    slack_vocab = 0.0
    if len(points) >= 5 and len(set(tv)) >= 3:
        c_v, k_v = _nonnegative_line(tv, slack)
        if k_v > 0 and _sse(tv, slack, c_v, k_v) < _sse(alloc, slack, slack_bytes, slack_ratio):
            slack_bytes, slack_ratio, slack_vocab = c_v, 0.0, k_v
    # 3. outside the allocator: CUDA context and friends
    with_device = [p for p in points if p.device_bytes is not None]
    outside = [float(p.device_bytes - p.reserved_bytes) for p in with_device]  # type: ignore[operator]
    context = statistics.fmean(outside) if outside else 0.0

    overheads = DeviceOverheads(
        cuda_context_bytes=int(round(context)), cublas_workspace_bytes=int(round(workspace)),
        kernel_temp_bytes_per_token_hidden=round(temp, 6), allocator_slack_ratio=round(slack_ratio, 6),
        allocator_slack_bytes=int(round(slack_bytes)), allocator_slack_bytes_per_token_vocab=round(slack_vocab, 6))
    quality = fit_quality(points, overheads)
    if left_out:
        quality["left_out_tensor_model_misses"] = left_out
    return overheads, quality


def fit_quality(points: list[FitPoint], overheads: DeviceOverheads) -> dict[str, Any]:
    """Errors of predicted vs measured peaks (device where measured, else reserved), as ratios."""
    errs = []
    for p in points:
        measured = p.device_bytes if p.device_bytes is not None else p.reserved_bytes
        if p.device_bytes is not None:
            pred = overheads.device_bytes(p.predicted_tensor_bytes, tokens=p.tokens, hidden=p.hidden_size,
                                          vocab=p.vocab)
        else:
            pred = overheads.reserved_bytes(p.predicted_tensor_bytes, tokens=p.tokens, hidden=p.hidden_size,
                                            vocab=p.vocab)
        errs.append((pred - measured) / measured)
    abs_errs = [abs(e) for e in errs]
    return {"n": len(points), "median_abs_error": round(statistics.median(abs_errs), 5),
            "max_abs_error": round(max(abs_errs), 5), "under_predicted": sum(e < 0 for e in errs),
            "worst_under": round(min(min(errs), 0.0), 5)}


# -- records -> points ----------------------------------------------------------------------------------
def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if isinstance(d, dict) and d.get(k) is not None:
            return d[k]
    return None


def point_from_record(rec: dict[str, Any]) -> FitPoint | None:
    """A FitPoint from a benchmarks/harness.py result or a `plan --apply` run record; None if unusable.

    Reads predicted.peak_tensor_bytes (or predicted_tensor_bytes); the measured peaks from `peak`
    (harness: allocated/reserved/device_bytes) or `measured` (run log: peak_tensor_bytes is the
    allocator's peak on CUDA, peak_reserved_bytes, peak_device_bytes); tokens (else the largest
    batch shape, else config batch x cutoff_len); hidden_size (else model.hidden_size, else the
    catalog's). A run without reserved bytes (a CPU run) is unusable.
    """
    if rec.get("status", "ok") != "ok":
        return None
    predicted = _first(rec.get("predicted") or {}, "peak_tensor_bytes") or rec.get("predicted_tensor_bytes")
    meas = rec.get("peak") or rec.get("measured") or {}
    alloc = _first(meas, "allocated_bytes", "peak_allocated_bytes", "peak_tensor_bytes")
    reserved = _first(meas, "reserved_bytes", "peak_reserved_bytes")
    device = _first(meas, "device_bytes", "peak_device_bytes")
    cfg = rec.get("config") or {}
    train = cfg.get("train", cfg)
    shape = (rec.get("data") or {}).get("max_batch_shape")
    tokens = rec.get("tokens") or (shape[0] * shape[1] if shape else None) or (
        (train.get("per_device_train_batch_size") or 1) * train["cutoff_len"] if train.get("cutoff_len") else None)
    hidden = rec.get("hidden_size") or _first(rec.get("model") or {}, "hidden_size") or _catalog_hidden(rec)
    if None in (predicted, alloc, reserved, tokens, hidden):
        return None
    return FitPoint(name=str(cfg.get("name") or rec.get("name") or rec.get("created") or ""),
                    predicted_tensor_bytes=int(predicted), tokens=int(tokens), hidden_size=int(hidden),
                    allocated_bytes=int(alloc), reserved_bytes=int(reserved),
                    device_bytes=int(device) if device is not None else None, vocab=logits_vocab(rec))


def logits_vocab(rec: dict[str, Any]) -> int:
    """The vocabulary of a record's model when its step materializes logits (no Liger fused loss), else 0."""
    cfg = rec.get("config") or {}
    train = cfg.get("train", cfg)
    if train.get("use_liger_kernel") or train.get("enable_liger_kernel"):
        return 0
    model = rec.get("model") or {}
    vocab = model.get("vocab_size") if isinstance(model, dict) else None
    if vocab:
        return int(vocab)
    name = model.get("name") if isinstance(model, dict) else None
    if not name:
        return 0
    from planner.model.catalog import find_model

    entry = find_model(name) or find_model(name.rsplit("-", 1)[0])  # "<model>-2L": a shortened copy
    return entry.spec.vocab_size if entry else 0


def _catalog_hidden(rec: dict[str, Any]) -> int | None:
    name = (rec.get("model") or {}).get("name")
    if not name:
        return None
    from planner.model.catalog import find_model

    entry = find_model(name)
    return entry.spec.hidden_size if entry else None


def read_records(path: Path) -> list[dict[str, Any]]:
    """JSON lines, a JSON list, or a JSON object with a `measurements` list."""
    if not path.is_file():
        raise UserError(f"{path}: no such file.", "Pass the run log of `plan --apply` (runs.jsonl).")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("[") or (stripped.startswith("{") and "\n{" not in stripped.rstrip()):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from e
        rows = doc if isinstance(doc, list) else doc.get("measurements", [doc])
        return [r for r in rows if isinstance(r, dict)]
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}).",
                            "Delete or fix that line; every line is one run record.") from e
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _gpu_of(rec: dict[str, Any]) -> dict[str, Any]:
    """The measured card: harness results hold it in `gpu`, run logs in `gpu.device`."""
    g = rec.get("gpu")
    if isinstance(g, dict) and isinstance(g.get("device"), dict):
        g = g["device"]
    if isinstance(g, dict):
        return {} if g.get("kind") == "cpu" or g.get("name") == "cpu" else g
    return {"name": g} if g and g != "cpu" else {}


def calibrate_from_log(log_path: Path | str, *, base: CalibrationFile | None = None) -> CalibrationFile:
    """Refit a card's calibration with the measurements of `plan --apply` runs.

    Uses the card most runs in the log were on; its existing calibration (this machine's, else the
    shipped one; or `base`) contributes its measurements, so a few runs refine rather than replace it.

        >>> calibrate_from_log("~/.local/share/vramplan/runs.jsonl").fitted["cuda_context_bytes"]
    """
    path = Path(log_path).expanduser()
    records = read_records(path)
    usable = [(r, p) for r in records if (p := point_from_record(r)) is not None and _gpu_of(r).get("name")]
    if not usable:
        raise UserError(
            f"{path}: no run with a prediction and measured peaks on a GPU (found {len(records)} records).",
            "Runs of `plan --apply` on a CUDA card log them; CPU runs and failed runs are skipped.")
    card = Counter(card_key(_gpu_of(r)["name"]) for r, _ in usable).most_common(1)[0][0]
    mine = [(r, p) for r, p in usable if card_key(_gpu_of(r)["name"]) == card]
    last = mine[-1][0]
    if base is None:
        base = next((c for c in load_calibrations() if card_key(c.gpu_name) == card), None)
    points = [p for _, p in mine]
    if base is not None:
        points = [q for q in (point_from_record(m) or _point_from_json(m) for m in base.measurements) if q] + points
    overheads, quality = fit_overheads(points)
    stack = last.get("stack") or (base.stack if base else {})
    gpu = {**(base.gpu if base else {}), **_gpu_of(last)}
    return CalibrationFile(
        gpu=gpu, stack=stack, fitted=overheads.to_json(),
        fit_quality={**quality, "sources": [str(path)] + ([base.path] if base and base.path else [])},
        measurements=[p.to_json() for p in points],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _point_from_json(d: dict[str, Any]) -> FitPoint | None:
    """A FitPoint stored as such (calibrate_from_log writes its measurements this way)."""
    try:
        return FitPoint(**{k: d[k] for k in FitPoint.__dataclass_fields__ if k in d})
    except TypeError:
        return None
