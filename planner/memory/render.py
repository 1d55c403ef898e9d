"""Terminal rendering of a MemoryBreakdown: components as bars, phases, peak vs budget.

    >>> render_memory(estimate_memory(spec, train, setup), Console())
"""

from __future__ import annotations

from rich.table import Table

from planner.memory.breakdown import PHASES, MemoryBreakdown
from planner.units import gib

BAR_WIDTH = 30

LABELS = {
    "weights": "weights", "quant_constants": "quantization constants", "adapter": "LoRA adapters",
    "gradients": "gradients", "master_weights": "fp32 master weights", "optimizer_states": "optimizer states",
    "optimizer_temporaries": "optimizer step temporaries", "buffers": "DDP/ZeRO buffers", "batch": "batch",
    "activations": "activations", "logits": "logits + loss", "cuda_context": "CUDA context",
    "cublas_workspace": "cuBLAS workspaces", "kernel_temporaries": "kernel temporaries",
    "allocator_slack": "allocator slack",
}


def render_memory(mb: MemoryBreakdown, console) -> None:
    """Print the breakdown (largest component first), the phases and the verdict."""
    where = "CPU" if mb.device == "cpu" else "GPU"
    recipe_name = ""
    if mb.inputs is not None:
        from planner.trainers import recipe

        recipe_name = f", trained by {recipe(mb.inputs[1].trainer).tool}"
    table = Table(title=f"Memory per {where} at the {mb.peak_phase} peak "
                        f"(batch {mb.batch_size} x {mb.seq_len} tokens{recipe_name})", title_justify="left")
    table.add_column("component")
    table.add_column("GiB", justify="right")
    table.add_column("share", justify="right")
    table.add_column("")
    total = max(mb.peak_bytes, 1)
    biggest = max(mb.components.values(), default=1) or 1
    for name, nbytes in sorted(mb.components.items(), key=lambda kv: -kv[1]):
        bar = "█" * max(1 if nbytes else 0, round(BAR_WIDTH * nbytes / biggest))
        table.add_row(LABELS.get(name, name), gib(nbytes, unit=False), f"{100 * nbytes / total:.0f}%", f"[cyan]{bar}[/]")
    table.add_section()
    table.add_row("[bold]peak[/]", f"[bold]{gib(mb.peak_bytes, unit=False)}[/]", "", "")
    table.add_row("budget", gib(mb.budget_bytes, unit=False), "", "")
    console.print(table)

    if mb.device != "cpu" and mb.reserved_bytes:
        console.print(f"Peak per GPU: allocated {gib(mb.allocated_bytes, unit=False)}, reserved {gib(mb.reserved_bytes, unit=False)}, "
                      f"device (nvidia-smi) {gib(mb.peak_bytes, unit=False)} GiB; the plan is checked against the device peak.")
    phases = "  ".join(f"{p} {gib(mb.phases[p], unit=False)}" + (" *" if p == mb.peak_phase else "")
                       for p in PHASES if p in mb.phases)
    console.print(f"Phases (live tensors, GiB): {phases}")
    if mb.fits:
        margin = f", within the {mb.margin:.0%} margin (limit {gib(mb.limit_bytes, unit=False)} GiB)" if mb.margin else ""
        console.print(f"[green]Fits[/]: {gib(mb.peak_bytes, unit=False)} of {gib(mb.budget_bytes, unit=False)} GiB{margin}, "
                      f"headroom {gib(mb.headroom_bytes, unit=False)} GiB.")
    else:
        for line in mb.shortfalls():
            console.print(f"[red]Does not fit[/] ({line}).")
    if mb.host_budget_bytes is not None and (mb.host_bytes or not mb.host_fits):
        pinned = f" ({gib(mb.host_bytes, unit=False)} pinned by ZeRO offload)" if mb.host_bytes else ""
        console.print(f"Host RAM per node: {gib(mb.host_need_bytes, unit=False)} GiB{pinned} of {gib(mb.host_budget_bytes, unit=False)} "
                      f"GiB usable; the node's RAM is {mb.host_source}.")
    per_1k = mb.activations_per_1k_tokens()
    if per_1k:
        console.print("Activations per 1K tokens (GiB): " + "  ".join(
            f"{name.replace('_', ' + ').replace('grad + ckpt', 'checkpointing')} {gib(v, unit=False)}"
            for name, v in per_1k.items()))
    if mb.overheads_source and mb.device != "cpu":
        console.print(f"[dim]Device overheads: {mb.overheads_source}[/]")
    for note in mb.notes:
        console.print(f"[dim]Note: {note}[/]")
