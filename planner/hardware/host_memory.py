"""Host RAM: one per-node budget for the search and the final check alike.

The figure comes from, in order: `--host-mem SIZE` (per node); this machine's RAM when the plan is for
this machine (its GPUs were detected, or `--gpu cpu`); else a stated default for the card class, scaled
by the GPUs per node (HOST_RAM_PER_GPU, each with its source). A plan needs, per node, what ZeRO offload
moves to the host (pinned: the exported DeepSpeed configs set `pin_memory: true`) plus every GPU
process's own host footprint (PROCESS_HOST_BYTES).

    >>> host_ram_for(setup)            # (bytes per node, where the figure comes from)
    (2199023255552, 'default for 8 x H100-SXM-80G: 256 GiB per GPU (DGX H100 ...)')
    >>> host_budget_bytes(setup), host_need_bytes(setup, offload_bytes=0)
"""

from __future__ import annotations

import re

from planner.errors import UserError
from planner.hardware.gpu_spec import GpuSetup, GpuSpec
from planner.units import GIB, KIB, MIB, PIB, TIB, gib

# What the plan may use of a node's RAM: the OS, page cache for the dataset and the data-loader workers
# keep the rest. Assumption (no published figure; a 10% reserve is what Linux distributions' OOM
# killers leave in practice before swapping starts).
HOST_RAM_USABLE = 0.90
# Host RAM of one GPU training process before any offload: the CUDA driver's host-side allocations, the
# CUDA libraries mapped into the process (cuBLAS, cuDNN, NCCL: ~1-2 GB resident), torch + transformers
# (~0.7 GiB resident on the CPU, measured here: `import torch, transformers` with a tiny model) and the
# pinned data-loader buffers. Planning figure, rounded up; also the floor `--host-mem` is checked against.
PROCESS_HOST_BYTES = 3 * GIB

# Host RAM per GPU when planning for another machine, by catalog card, with the machine it comes from.
# Conservative: the smaller figure where vendors' reference systems and cloud instances differ.
_DGX_H100 = "DGX H100/H200 datasheet and AWS p5.48xlarge: 2 TiB for 8 GPUs"
_DGX_A100 = "DGX A100 320GB datasheet: 1 TiB for 8 GPUs (AWS p4d/p4de.24xlarge: 1152 GiB)"
HOST_RAM_PER_GPU: dict[str, tuple[int, str]] = {
    "H100-SXM-80G": (256 * GIB, _DGX_H100),
    "H200-141G": (256 * GIB, _DGX_H100),
    "H800-80G": (256 * GIB, "HGX H800 8-GPU servers, as the HGX H100 (" + _DGX_H100 + ")"),
    "H20-96G": (256 * GIB, "HGX H20 8-GPU servers, as the HGX H100 (" + _DGX_H100 + ")"),
    "H100-PCIe-80G": (128 * GIB, "assumption: PCIe servers, half an HGX node's RAM per GPU"),
    "H100-NVL-94G": (128 * GIB, "assumption: PCIe servers, half an HGX node's RAM per GPU"),
    "A100-SXM-40G": (128 * GIB, _DGX_A100),
    "A100-SXM-80G": (128 * GIB, _DGX_A100),
    "A800-80G": (128 * GIB, "HGX A800 servers, as the HGX A100 (" + _DGX_A100 + ")"),
    "MI300X-192G": (224 * GIB, "Azure ND MI300X v5: 1850 GiB for 8 GPUs"),
    "L40S-48G": (192 * GIB, "AWS g6e.48xlarge: 1536 GiB for 8 L40S"),
    "L4-24G": (96 * GIB, "AWS g6.48xlarge: 768 GiB for 8 L4"),
    "A10-24G": (96 * GIB, "AWS g5.48xlarge: 768 GiB for 8 A10G"),
    "V100-SXM2-32G": (96 * GIB, "AWS p3dn.24xlarge: 768 GiB for 8 V100 32GB"),
    "V100-SXM2-16G": (61 * GIB, "AWS p3.16xlarge: 488 GiB for 8 V100 16GB"),
    "T4-16G": (48 * GIB, "AWS g4dn.metal: 384 GiB for 8 T4"),
}
# Workstation cards (GeForce, RTX A6000) and sizes given as `--gpu 24GB`: no reference system. Twice the
# GPU memory, at least 32 GiB per node, is a common workstation build (a 4090 box with 64 GB is typical;
# 48 GiB is the cautious side). Assumption.
WORKSTATION_RAM_PER_GPU_MEMORY = 2.0
WORKSTATION_MIN_BYTES = 32 * GIB

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNIT = {"": GIB, "k": KIB, "m": MIB, "g": GIB, "t": TIB, "p": PIB}


def parse_size(text: str, *, flag: str = "--host-mem") -> int:
    """'512G', '2TB', '1.5TiB', '768' (GiB) -> bytes. Binary units: a server sold as 2 TB reports ~2 TiB."""
    m = _SIZE.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise UserError(f"{flag} {text}: not a memory size.", f"Give it like {flag} 512G or {flag} 2TB (per node).")
    return int(float(m.group(1)) * _UNIT[m.group(2).lower()])


def default_host_ram(gpu: GpuSpec, count: int) -> tuple[int, str]:
    """(bytes per node, source) for `count` x `gpu` on a machine we cannot see."""
    known = HOST_RAM_PER_GPU.get(gpu.name)
    if known is not None:
        per_gpu, source = known
        return per_gpu * count, f"assumed for {count} x {gpu.name}: {per_gpu // GIB} GiB per GPU ({source})"
    ram = max(int(WORKSTATION_RAM_PER_GPU_MEMORY * gpu.memory_bytes * count), WORKSTATION_MIN_BYTES)
    return ram, (f"assumed for {count} x {gpu.name}: twice the GPU memory, at least "
                 f"{WORKSTATION_MIN_BYTES // GIB} GiB (a workstation; no reference system)")


def host_ram_for(setup: GpuSetup) -> tuple[int, str]:
    """The node's RAM the plan is made for, and where the figure comes from."""
    if setup.host_ram_bytes:
        return int(setup.host_ram_bytes), setup.host_ram_source or "given"
    return default_host_ram(setup.gpu, setup.count)


def host_budget_bytes(setup: GpuSetup) -> int | None:
    """Host RAM per node the plan may use (None on a CPU setup: there host RAM is the device budget)."""
    if setup.gpu.is_cpu:
        return None
    return int(host_ram_for(setup)[0] * HOST_RAM_USABLE)


def process_host_bytes(setup: GpuSetup) -> int:
    """Host RAM of the node's GPU processes before any offload."""
    return 0 if setup.gpu.is_cpu else PROCESS_HOST_BYTES * setup.count


def host_need_bytes(setup: GpuSetup, offload_bytes: int) -> int:
    """Host RAM per node a plan needs: the processes plus what ZeRO offload pins there."""
    return process_host_bytes(setup) + int(offload_bytes)


def check_host_mem(setup: GpuSetup, given_bytes: int, text: str) -> None:
    """--host-mem below what the node's GPU processes need before any offload is a mistake in the flag."""
    floor = process_host_bytes(setup)
    if floor and given_bytes * HOST_RAM_USABLE < floor:
        raise UserError(f"--host-mem {text}: {gib(given_bytes, 1)} per node cannot hold {setup.count} GPU "
                        f"process(es) ({PROCESS_HOST_BYTES // GIB} GiB each for CUDA, torch and pinned buffers, "
                        f"with {1 - HOST_RAM_USABLE:.0%} left to the OS).",
                        "--host-mem is the RAM of one node (e.g. --host-mem 512G); check the unit.")
