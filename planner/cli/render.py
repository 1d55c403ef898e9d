"""Rendering: rich tables for people, one JSON/YAML object for programs. Units become GiB only here."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

from planner.units import GIB, display_value, gib, human_count  # noqa: F401 - re-exported


def stdout_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@contextlib.contextmanager
def stdout_to_stderr():
    """Send everything written to file descriptor 1 to stderr meanwhile: libraries that print or log to
    stdout (DeepSpeed's logger, C extensions, child processes) cannot break the one-document stdout."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def dump(obj: dict[str, Any], fmt: str) -> None:
    """Exactly one object on stdout."""
    if fmt == "json":
        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def emit(report, fmt: str) -> None:
    if fmt != "table":
        for warning in getattr(report, "warnings", ()):
            print(f"warning: {warning}", file=sys.stderr)
        for note in report.notes:
            print(f"note: {note}", file=sys.stderr)
        dump(report.to_json(), fmt)
        return
    console = stdout_console()
    _model_table(report, console)
    for section in report.sections.values():
        render = getattr(section, "render", None)
        if render is not None:
            render(console)
    for note in report.notes:
        if note != report.model_note:  # shown under the model table already
            console.print(f"[yellow]note:[/] {note}")
    for warning in getattr(report, "warnings", ()):
        console.print(f"[bold yellow]warning:[/] {warning}")


def _model_table(report, console) -> None:
    from rich.table import Table

    m, p, s = report.model, report.params, report.setup
    t = Table(title=f"{m.name}  ({m.model_type}, {m.source})", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("parameters", f"{p.total:,} ({human_count(p.total)})"
              + (f", active {report.params_active:,}" if m.is_moe else ""))
    groups = ", ".join(f"{k} {human_count(v)}" for k, v in p.to_json().items() if v)
    t.add_row("by group", groups)
    shape = (f"{m.num_layers} layers, hidden {m.hidden_size}, heads {m.num_heads}/{m.num_kv_heads} kv, "
             f"head_dim {m.head_dim}, vocab {m.vocab_size:,}"
             + (", tied embeddings" if m.tie_word_embeddings else ""))
    t.add_row("shape", shape)
    if m.is_moe:
        t.add_row("experts", f"{m.num_experts} routed, top-{m.num_experts_per_tok}, "
                             f"{len(m.moe_layers)} MoE layers")
    t.add_row("context", f"{m.max_position_embeddings:,} tokens")
    card = f"{s.count} x {s.gpu.name}" + (f" x {s.nodes} nodes" if s.nodes > 1 else "")
    card += f", {gib(s.gpu.memory_bytes)} each" + (" (detected)" if s.detected else "")
    t.add_row("hardware", card)
    console.print(t)
    if report.model_note:
        console.print(f"[yellow]note:[/] {report.model_note}")


def emit_models(fmt: str) -> None:
    from planner.model.catalog import load_models
    from planner.model.params import count_params

    rows = [{"name": e.name, "hub_id": e.hub_id, "model_type": e.spec.model_type,
             "params_total": count_params(e.spec).total, "layers": e.spec.num_layers,
             "hidden_size": e.spec.hidden_size, "context": e.spec.max_position_embeddings}
            for e in load_models()]
    if fmt != "table":
        dump({"models": rows}, fmt)
        return
    from rich.table import Table

    t = Table(title="Model catalog (profiles/models)")
    for col in ("name", "hub id", "type", "params", "layers", "hidden", "context"):
        t.add_column(col, justify="right" if col in ("params", "layers", "hidden", "context") else "left")
    for r in rows:
        t.add_row(r["name"], r["hub_id"], r["model_type"], human_count(r["params_total"]), str(r["layers"]),
                  str(r["hidden_size"]), f"{r['context']:,}")
    stdout_console().print(t)


def emit_gpus(fmt: str) -> None:
    from planner.hardware.catalog import load_gpus
    from planner.hardware.gpus import inspect_gpus

    rows = [{"name": e.spec.name, "memory_bytes": e.spec.memory_bytes, "bf16": e.spec.bf16,
             "fp8": e.spec.fp8, "bf16_tflops": e.spec.bf16_tflops, "bandwidth_gbs": e.spec.bandwidth_gbs,
             "aliases": list(e.aliases)} for e in load_gpus()]
    found = [{"index": d.index, "name": d.name, "total_bytes": d.total_bytes, "free_bytes": d.free_bytes,
              "driver": d.driver} for d in inspect_gpus()]
    if fmt != "table":
        dump({"gpus": rows, "detected": found}, fmt)
        return
    from rich.table import Table

    t = Table(title="GPU catalog (profiles/gpus.yaml)")
    for col in ("name", "memory", "bf16", "fp8", "bf16 TFLOP/s", "GB/s", "aliases"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], gib(r["memory_bytes"]), "yes" if r["bf16"] else "no", "yes" if r["fp8"] else "no",
                  f"{r['bf16_tflops']:g}", f"{r['bandwidth_gbs']:g}", ", ".join(r["aliases"]))
    console = stdout_console()
    console.print(t)
    if found:
        for d in found:
            console.print(f"GPU {d['index']}: {d['name']}, {gib(d['total_bytes'])} total, "
                          f"{gib(d['free_bytes'])} free, driver {d['driver']}")
    else:
        console.print("No NVIDIA GPU found on this machine (NVML unavailable).")
