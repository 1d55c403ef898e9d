"""Shared result helpers for the benchmark scripts: error statistics, Markdown tables, the scatter plot.

    >>> error_stats([(105, 100), (97, 100)])["median_abs_error"]
    0.04
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from planner.units import GIB

UNDER_TOLERANCE = 0.03  # an under-prediction beyond 3% is the failure that costs a crash (OOM)

# Plot colours: vramplan first, then each anchor.
COLOURS = {"vramplan": "#1f77b4", "accelerate": "#ff7f0e", "deepspeed": "#2ca02c", "llamafactory": "#d62728",
           "gpu_poor": "#9467bd", "guide_2p5gb_per_1k": "#8c564b"}
MARKERS = {"vramplan": "o", "accelerate": "s", "deepspeed": "^", "llamafactory": "D", "gpu_poor": "v",
           "guide_2p5gb_per_1k": "P"}


def gpu_label(name: str) -> str:
    """File label of a card: 'NVIDIA H100 80GB HBM3' -> 'h100-sxm-80g' (catalog name when known)."""
    from planner.hardware.calibration import card_key

    key = card_key(name) if name and name != "cpu" else "cpu"
    return re.sub(r"[^a-z0-9.]+", "-", key.lower()).strip("-")


def rel_error(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or not measured:
        return None
    return (predicted - measured) / measured


def error_stats(pairs: list[tuple[float | None, float]]) -> dict[str, Any]:
    """(predicted, measured) pairs -> n, median/max |error|, under-predictions (all, beyond 3%)."""
    errs = [e for p, m in pairs if (e := rel_error(p, m)) is not None]
    if not errs:
        return {"n": 0}
    abs_errs = [abs(e) for e in errs]
    return {"n": len(errs), "median_abs_error": round(statistics.median(abs_errs), 5),
            "max_abs_error": round(max(abs_errs), 5), "mean_error": round(statistics.fmean(errs), 5),
            "under_predicted": sum(e < 0 for e in errs),
            "under_beyond_3pct": sum(e < -UNDER_TOLERANCE for e in errs)}


def fmt_gib(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / GIB:.2f}" if x >= 0.1 * GIB else f"{x / GIB:.3g}"


def fmt_abs_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}"


def md_table(headers: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def scatter_png(series: dict[str, list[tuple[float, float]]], path: Path, *, title: str,
                xlabel: str = "measured peak device memory (GiB)") -> Path | None:
    """Predicted vs measured (GiB, log-log) per predictor, with the y = x line; returns path
    (None without matplotlib: the JSON keeps everything the plot shows; re-plot with --report-only)."""
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6.5), dpi=110)
    values = [v for pts in series.values() for pt in pts for v in pt if v and v > 0]
    lo, hi = (min(values) / GIB / 1.5, max(values) / GIB * 1.5) if values else (0.1, 100)
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="y = x (exact)")
    ax.fill_between([lo, hi], [lo * 0.95, hi * 0.95], [lo * 1.05, hi * 1.05], color="grey", alpha=0.15,
                    label="±5%")
    for name, pts in series.items():
        pts = [(m, p) for m, p in pts if m and p and m > 0 and p > 0]
        if not pts:
            continue
        ax.scatter([m / GIB for m, _ in pts], [p / GIB for _, p in pts], label=name, s=36 if name == "vramplan" else 22,
                   color=COLOURS.get(name), marker=MARKERS.get(name, "o"), alpha=0.9 if name == "vramplan" else 0.65,
                   zorder=3 if name == "vramplan" else 2, edgecolors="none")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("predicted (GiB)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
