"""report.json, the terminal table and loss.png of one `plan --apply` run: predicted vs measured memory.

`predicted` and `measured` carry the same keys for what was measured (always peak_tensor_bytes; on
CUDA also peak_reserved_bytes and peak_device_bytes; phases and components where both sides have
them); `error` holds (predicted - measured) / measured for each.

    >>> report = build_report(plan=plan, spec=spec, setup=setup, result=result, prediction=pred.to_json())
    >>> write_report(report, out_dir); render_report(report, console)
"""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from planner import __version__
from planner.model.params import count_params
from planner.units import GIB

# measured key -> key of MemoryBreakdown.to_json() holding the same quantity
TOP_KEYS = {"peak_tensor_bytes": "peak_tensor_bytes", "peak_reserved_bytes": "peak_reserved_bytes",
            "peak_device_bytes": "peak_bytes"}
PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "deepspeed", "liger-kernel")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the training stack's PACKAGES (from package metadata: nothing is imported)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def stack_info(attn: str) -> dict[str, Any]:
    """The software stack of a `plan --apply` run, as report.json records it (nothing heavy is imported here)."""
    out: dict[str, Any] = {"python": platform.python_version(), "vramplan": __version__}
    out.update(package_versions())
    try:
        import torch

        out["cuda"] = torch.version.cuda
    except ImportError:  # pragma: no cover - the runner needs torch
        out["cuda"] = None
    out["PYTORCH_CUDA_ALLOC_CONF"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    out["attn_implementation"] = attn
    return out


def measurement_stack(torch) -> dict[str, Any]:
    """The software stack as the benchmarks' measurements record it (benchmarks.measure_case and the question
    scripts): torch's own version string, the other PACKAGES under Python names (liger_kernel), cuDNN when a
    CUDA device is there, and the allocator setting."""
    versions = package_versions()
    out: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                           "python": platform.python_version()}
    out.update({name.replace("-", "_"): versions[name] for name in PACKAGES if name != "torch"})
    if torch.cuda.is_available() and torch.backends.cudnn.is_available():
        out["cudnn"] = torch.backends.cudnn.version()
    out["PYTORCH_CUDA_ALLOC_CONF"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or None
    return out


def device_info(device: str, measured: dict[str, Any]) -> dict[str, Any]:
    if device != "cuda":
        return {"name": "cpu", "kind": "cpu", "note": "tensor accounting (no device allocator)"}
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    out = {"name": props.name, "kind": "cuda", "memory_bytes": int(props.total_memory),
           "compute_capability": f"{props.major}.{props.minor}"}
    out.update({k: v for k, v in measured.get("nvml", {}).items() if v is not None})
    return out


def relative_error(predicted: float | int | None, measured: float | int | None) -> float | None:
    if predicted is None or not measured:
        return None
    return round((predicted - measured) / measured, 4)


def group_components(components: dict[str, int]) -> dict[str, int]:
    """The memory model's components at its peak, grouped as runner.measure.group_categories groups the
    measured ones (device overheads and DeepSpeed master weights have no measured counterpart here)."""
    c = components
    return {
        "weights": c.get("weights", 0) + c.get("quant_constants", 0) + c.get("adapter", 0),
        "optimizer_states": c.get("optimizer_states", 0),
        "gradients": c.get("gradients", 0),
        "batch": c.get("batch", 0),
        "activations_and_temporaries": c.get("activations", 0) + c.get("logits", 0)
        + c.get("optimizer_temporaries", 0),
    }


def compare(prediction: dict[str, Any] | None, measured: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(predicted, measured, error) restricted to the quantities both sides have."""
    pred_out: dict[str, Any] = {}
    meas_out: dict[str, Any] = {}
    err: dict[str, Any] = {}
    prediction = dict(prediction or {})
    if prediction.get("components") and "categories" in measured:  # tensor accounting: grouped alike
        prediction["components"] = group_components(prediction["components"])
    for key, pkey in TOP_KEYS.items():
        if key in measured:
            meas_out[key] = measured[key]
            if prediction.get(pkey) is not None:
                pred_out[key] = int(prediction[pkey])
                err[key] = relative_error(pred_out[key], measured[key])
    for group in ("phases", "components"):
        m, p = measured.get(group) or {}, prediction.get(group) or {}
        common = [k for k in m if isinstance(p.get(k), (int, float))]
        if common:
            meas_out[group] = {k: m[k] for k in common}
            pred_out[group] = {k: int(p[k]) for k in common}
            err[group] = {k: relative_error(p[k], m[k]) for k in common}
    return pred_out, meas_out, err


def _loss_series(history: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {"train": [], "eval": []}
    for row in history:
        if isinstance(row.get("loss"), (int, float)):
            out["train"].append({"step": row.get("step"), "loss": float(row["loss"])})
        if isinstance(row.get("eval_loss"), (int, float)):
            out["eval"].append({"step": row.get("step"), "loss": float(row["eval_loss"])})
    return out


def build_report(*, plan, spec, setup, result, prediction: dict[str, Any] | None,
                 prediction_note: str | None = None, oom: dict[str, Any] | None = None) -> dict[str, Any]:
    predicted, measured_common, error = compare(prediction, result.measured)
    counts = count_params(spec)
    shapes = result.batch_shapes
    report: dict[str, Any] = {
        "vramplan_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "status": result.status,
        "model": {"name": spec.name, "model_type": spec.model_type, "hub_id": spec.hub_id,
                  "params_total": counts.total},
        "config": plan.config.to_json(),
        "gpu": {"planned": {k: plan.gpu.get(k) for k in ("name", "count", "nodes")}
                | {"memory_bytes": setup.gpu.memory_bytes},
                "device": device_info(result.device, result.measured)},
        "data": {"description": result.data, "samples": len(result.dataset_lengths),
                 "max_tokens": max(result.dataset_lengths, default=0),
                 "micro_batches": len(shapes), "max_batch_shape": list(max(shapes, key=lambda s: s[0] * s[1]))
                 if shapes else None},
        "steps": result.measured.get("steps_measured", 0),
        "predicted": predicted,
        "measured": {**measured_common, **{k: v for k, v in result.measured.items() if k not in measured_common}},
        "error": error,
        "prediction": prediction,
        "stack": stack_info(result.attn_implementation),
        "loss": _loss_series(result.log_history),
        "world_size": result.world_size,
        "per_rank": result.per_rank,
        "checkpoints": result.checkpoints,
        "files": result.saved,
        "notes": list(result.notes) + ([prediction_note] if prediction_note else []),
    }
    if oom:
        report["oom"] = oom
    return report


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / "report.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def plot_loss(report: dict[str, Any], out_dir: Path) -> str | None:
    """OUT/loss.png (train and eval loss by step); a note instead when matplotlib is missing."""
    loss = report.get("loss") or {}
    if not loss.get("train") and not loss.get("eval"):
        return "no loss logged: loss.png not written"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: loss.png not written (pip install 'vramplan[plot]')"
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for name, style in (("train", "-o"), ("eval", "--s")):
        pts = loss.get(name) or []
        if pts:
            ax.plot([p["step"] for p in pts], [p["loss"] for p in pts], style, label=name, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{report['model']['name']} ({report['config']['method']})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png")
    plt.close(fig)
    return None


def human_bytes(n: int | None) -> str:
    """GiB for real runs; MiB/KiB for the tiny models of CPU checks, so their figures stay readable."""
    if n is None:
        return "-"
    for unit, size in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.3f} {unit}" if unit == "GiB" else f"{n / size:.2f} {unit}"
    return f"{n} B"


def _pct(e: float | None) -> str:
    return "-" if e is None else f"{e * 100:+.1f}%"


def comparison_rows(report: dict[str, Any]) -> list[tuple[str, int | None, int | None, float | None]]:
    """(label, predicted, measured, error) rows, as the table shows them."""
    pred, meas, err = report["predicted"], report["measured"], report["error"]
    rows = []
    labels = {"peak_tensor_bytes": "peak tensors (allocated)", "peak_reserved_bytes": "peak reserved (allocator)",
              "peak_device_bytes": "peak device (NVML)"}
    for key, label in labels.items():
        if key in meas:
            rows.append((label, pred.get(key), meas.get(key), err.get(key)))
    for group in ("phases", "components"):
        names = meas.get(group) or {}
        for k, m in names.items():
            p = (pred.get(group) or {}).get(k)
            if p is None and group == "components" and not m:
                continue
            rows.append((f"  {group[:-1]} {k}", p, m, (err.get(group) or {}).get(k)))
    return rows


def render_report(report: dict[str, Any], console) -> None:
    """The side-by-side table (predicted | measured | error), then the stack line and notes."""
    from rich.table import Table

    status = report["status"]
    title = (f"{report['model']['name']} {report['config']['method']}: {report['steps']} step(s) measured, "
             f"{'finished' if status == 'ok' else 'OUT OF MEMORY'}")
    t = Table(title=title, title_justify="left")
    t.add_column("memory")
    t.add_column("predicted", justify="right")
    t.add_column("measured", justify="right")
    t.add_column("error", justify="right")
    for label, p, m, e in comparison_rows(report):
        t.add_row(label, human_bytes(p), human_bytes(m), _pct(e))
    console.print(t)
    s = report["stack"]
    console.print(f"[dim]stack: python {s['python']}, torch {s['torch']} (cuda {s['cuda']}), transformers "
                  f"{s['transformers']}, peft {s['peft']}, attn {s['attn_implementation']}; "
                  f"device: {report['gpu']['device']['name']}[/]")
    for note in report.get("notes") or []:
        console.print(f"[yellow]note:[/] {note}")
