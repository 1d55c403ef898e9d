"""GPU inspection (NVML) and `--gpu` parsing -> GpuSetup.

    >>> resolve_setup("4090", gpus=2).world_size
    2
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from planner.errors import UserError
from planner.hardware.catalog import closest_gpus, default_gpu, find_gpu
from planner.hardware.gpu_spec import GpuSetup, GpuSpec
from planner.units import GIB, gib


@dataclass(frozen=True)
class DetectedGpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int] | None
    driver: str | None


def inspect_gpus() -> list[DetectedGpu]:
    """Cards NVML sees on this machine; [] when there is no NVIDIA driver (or no nvidia-ml-py)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded: no GPU here
        return []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                cc = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
            except Exception:
                cc = None
            name = pynvml.nvmlDeviceGetName(handle)
            found.append(DetectedGpu(
                i, name.decode() if isinstance(name, bytes) else name, int(mem.total), int(mem.free), cc,
                driver.decode() if isinstance(driver, bytes) else driver,
            ))
        return found
    finally:
        pynvml.nvmlShutdown()


def host_ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_spec() -> GpuSpec:
    """Training on the CPU: host RAM is the budget, no CUDA context or workspaces."""
    return GpuSpec(name="cpu", memory_bytes=host_ram_bytes() or 16 * GIB, vendor="cpu", bf16=True,
                   source="this machine's RAM (os.sysconf)")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(g|gb|gib)\s*$", re.IGNORECASE)


def parse_gpu(text: str) -> GpuSpec:
    """`--gpu` value -> GpuSpec: a catalog card (`H100`, `4090`, `A100-80G`), `24GB`, or `cpu`."""
    if text.strip().lower() == "cpu":
        return cpu_spec()
    size = _SIZE.match(text)
    if size:
        # Cards sold as "24 GB" report about 24 GiB to the driver; plan for exactly that.
        gib = float(size.group(1))
        if gib <= 0:
            raise UserError(f"--gpu {text}: memory must be positive.")
        return GpuSpec(name=f"{size.group(1)}GB card", memory_bytes=int(gib * GIB), vendor="generic",
                       source="--gpu size given on the command line")
    entry = find_gpu(text)
    if entry is None:
        hint = ", ".join(closest_gpus(text)) or "see `plan gpus`"
        raise UserError(f"--gpu {text}: unknown card.",
                        f"Closest: {hint}. Or give a size (`--gpu 24GB`) or `--gpu cpu`.")
    return entry.spec


# "8xH100", "8 x H100", "H100:8", "H100*8": a count written into --gpu. Digits-first or an explicit
# separator only: card names themselves end in letters and digits (RTX6000, MI300X).
_COUNT_FIRST = re.compile(r"^\s*(\d+)\s*[x×*]\s*(\S.*?)\s*$", re.IGNORECASE)
_COUNT_LAST = re.compile(r"^\s*(\S.*?)\s*[:*]\s*(\d+)\s*$")
# A node holds at most 8-16 GPUs (DGX/HGX: 8; NVL/scale-up boxes more); beyond this, --nodes is meant.
MAX_GPUS_PER_NODE = 16


def split_gpu_count(text: str) -> tuple[str, int | None]:
    """`--gpu 8xH100` -> ("H100", 8); a plain card name -> (name, None)."""
    if find_gpu(text) is not None or _SIZE.match(text):
        return text, None
    for pattern, card_group, count_group in ((_COUNT_FIRST, 2, 1), (_COUNT_LAST, 1, 2)):
        m = pattern.match(text)
        if m:
            return m.group(card_group), int(m.group(count_group))
    return text, None


def _sanity_notes(spec: GpuSpec, count: int) -> list[str]:
    """Values that parse but cannot be real hardware: said, not refused (planning ahead is allowed)."""
    from planner.hardware.catalog import load_gpus

    notes = []
    biggest = max(load_gpus(), key=lambda e: e.spec.memory_bytes).spec
    if spec.vendor == "generic" and spec.memory_bytes > 2 * biggest.memory_bytes:
        notes.append(f"--gpu {spec.name[:-len(' card')]}: more than twice the largest card in the catalog "
                     f"({biggest.name}, {gib(biggest.memory_bytes, 0)}); planning as given")
    if count > MAX_GPUS_PER_NODE:
        notes.append(f"--gpus {count}: GPUs per node; a node holds at most {MAX_GPUS_PER_NODE}. For more "
                     "machines give --gpus per node and --nodes (e.g. --gpus 8 --nodes 4)")
    return notes


def _spec_from_detected(d: DetectedGpu) -> GpuSpec:
    entry = find_gpu(d.name)
    if entry is not None:
        return replace(entry.spec, memory_bytes=d.total_bytes)
    bf16 = d.compute_capability is not None and d.compute_capability >= (8, 0)
    return GpuSpec(name=d.name, memory_bytes=d.total_bytes, bf16=bf16,
                   compute_capability=".".join(map(str, d.compute_capability)) if d.compute_capability else None,
                   source="NVML (card not in the catalog: no peak TFLOP/s known)")


def resolve_setup(gpu: str | None, *, gpus: int | None = None, nodes: int = 1,
                  host_mem: str | None = None) -> GpuSetup:
    """What to plan for: `--gpu` when given, else the cards NVML sees, else the catalog's default card.

    Host RAM per node: `host_mem` (--host-mem) when given; this machine's RAM when the plan is for this
    machine (its GPUs were detected, or --gpu cpu); else left to the card-class default
    (planner.hardware.host_memory.default_host_ram), so the search and the final check read one figure.
    """
    if gpus is not None and gpus < 1:
        raise UserError(f"--gpus {gpus}: needs at least 1 GPU per node.")
    if nodes < 1:
        raise UserError(f"--nodes {nodes}: needs at least 1 node.")
    setup = _resolve_cards(gpu, gpus=gpus, nodes=nodes)
    if host_mem is not None:
        from planner.hardware.host_memory import check_host_mem, parse_size

        given = parse_size(host_mem)
        check_host_mem(setup, given, host_mem)
        return replace(setup, host_ram_bytes=given, host_ram_source=f"--host-mem {host_mem}")
    return setup


def _resolve_cards(gpu: str | None, *, gpus: int | None, nodes: int) -> GpuSetup:
    ram = host_ram_bytes()
    here = "this machine's RAM (os.sysconf)"
    if gpu is not None:
        card, count = split_gpu_count(gpu)
        if count is not None:
            if count < 1:
                raise UserError(f"--gpu {gpu}: needs at least 1 GPU.")
            if gpus is not None and gpus != count:
                raise UserError(f"--gpu {gpu} says {count} GPUs, --gpus says {gpus}.",
                                f"Give the count once: --gpu {card} --gpus N.")
            gpus = count
        spec = parse_gpu(card)
        if spec.is_cpu:
            if (gpus or 1) * nodes > 1:
                raise UserError("--gpu cpu plans for one process; drop --gpus/--nodes.")
            return GpuSetup(spec, count=1, nodes=nodes, host_ram_bytes=ram, host_ram_source=here)
        notes = _sanity_notes(spec, gpus or 1)
        # another machine's cards: its RAM is unknown here (the card-class default, or --host-mem)
        return GpuSetup(spec, count=gpus or 1, nodes=nodes, note="; ".join(notes) or None)
    found = inspect_gpus()
    if found:
        first = found[0]
        note = None
        if len({d.name for d in found}) > 1:
            note = f"mixed cards found; planning for the first: {first.name}"
        count = gpus or len(found)
        return GpuSetup(_spec_from_detected(first), count=count, nodes=nodes, detected=True,
                        free_bytes=min(d.free_bytes for d in found[:count]), driver=first.driver,
                        host_ram_bytes=ram, host_ram_source=here if ram else "", note=note)
    spec = default_gpu().spec
    return GpuSetup(spec, count=gpus or 1, nodes=nodes,
                    note=f"no GPU found on this machine: planning for {spec.name} (choose with --gpu)")
