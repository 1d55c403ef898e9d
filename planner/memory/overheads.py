"""Device memory outside the live tensors, before a calibration measured it for the card.

    allocated = live tensors + cuBLAS workspaces                       (torch max_memory_allocated)
    reserved  = allocated + allocator slack                            (torch max_memory_reserved)
    device    = reserved + CUDA context                                (nvidia-smi / NVML)

The slack of PyTorch's caching allocator is what it keeps cached beyond the live tensors at the peak:
block rounding and the blocks freed by the step's temporaries that a later, differently sized request
cannot reuse. Published pairs of max_memory_allocated and nvidia-smi (benchmarks/results/published.md,
reproduced by benchmarks/published_overheads.py) put it at a constant plus a part that grows with the
tokens per step: a little per token x hidden unit (activation temporaries), and about two fp32 copies
of the logits per token x vocabulary entry when the loss materializes them (Liger's fused linear
cross-entropy does not: the rows with Liger show only the first two terms).

`expandable_segments:True` (PYTORCH_CUDA_ALLOC_CONF) lets segments grow and shrink in place, which
removes most of the logits churn: torchtune#1185 measured 16.39 -> 10.83 GiB reserved on a QLoRA
Llama-3-8B run, axolotl#2183 37 -> 27 GB. We set it where we launch (runner, launch.sh) unless the user
set PYTORCH_CUDA_ALLOC_CONF; the model halves the logits term then (an assumption until a card
calibration measures it).

A calibration file (planner.hardware.calibration, fitted by benchmarks/calibrate.py or `plan calibrate`)
replaces all of these: pass its `.overheads` to estimate_memory. A CPU setup has none of them.

    >>> default_overheads(gpu).cuda_context_bytes
    536870912
"""

from __future__ import annotations

import os
from functools import lru_cache

from planner.hardware.calibration import DeviceOverheads
from planner.hardware.gpu_spec import GpuSpec
from planner.units import MIB

# CUDA context + kernel images with lazy module loading (CUDA >= 11.7, torch >= 2.0 default):
# ~300-500 MB; without lazy loading over 1 GB (pytorch#107667). The upper end, until measured.
CUDA_CONTEXT_BYTES = 512 * MIB
# cuBLAS workspace per handle: 8 MiB before Hopper, 32 MiB on Hopper (pytorch#89027, #120925). The
# autograd engine runs backward on its own device thread, which gets its own handle: two of them.
CUBLAS_WORKSPACE_BYTES = {"hopper": 2 * 32 * MIB, "other": 2 * 8 * MIB}
# Allocator slack without expandable segments, chosen on 23 published pairs from 3 sources (fms-acceleration
# A100-80GB references incl. Liger rows, llama-cookbook#41, peft#1469; benchmarks/results/published.md):
# predicted reserved/device peak from the measured allocated peak is never below the measured one by more
# than 2.9%, median |error| 4.9%. In-sample: the pairs are the only evidence until a card is calibrated.
ALLOCATOR_SLACK_BYTES = 1760 * MIB
SLACK_PER_TOKEN_HIDDEN = 3.0  # bytes per token x hidden unit
SLACK_PER_TOKEN_VOCAB = 8.25  # bytes per token x vocabulary entry: ~two fp32 logits copies stay cached
# expandable segments: the logits churn is mostly returned in place (torchtune#1185, axolotl#2183 above)
EXPANDABLE_VOCAB_FACTOR = 0.5
SOURCE = ("defaults from published pairs (benchmarks/results/published.md; pytorch#107667, #89027), not "
          "calibrated for this card")
ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE = "expandable_segments:True"


def _is_hopper_or_newer(gpu: GpuSpec) -> bool:
    try:
        return float(gpu.compute_capability or 0) >= 9.0
    except ValueError:
        return False


def allocator_setting(env: dict[str, str] | None = None) -> tuple[bool, str]:
    """(expandable segments on?, a line for the plan) for runs launched from this environment: vramplan sets
    expandable_segments:True where it launches unless PYTORCH_CUDA_ALLOC_CONF is already set."""
    value = (os.environ if env is None else env).get(ALLOC_CONF)
    if not value:
        return True, (f"{ALLOC_CONF}={EXPANDABLE} is set where vramplan launches (the runner, launch.sh); "
                      "the device model assumes it")
    on = "expandable_segments:true" in value.replace(" ", "").lower()
    return on, (f"{ALLOC_CONF}={value} (yours, kept): the device model assumes expandable segments "
                + ("on" if on else "off, so more allocator fragmentation"))


@lru_cache(maxsize=256)
def default_overheads(gpu: GpuSpec, expandable: bool = True) -> DeviceOverheads:
    """Uncalibrated overheads for `gpu` (all zero for a CPU)."""
    if gpu.is_cpu:
        return DeviceOverheads(source="cpu: no device overheads")
    ws = CUBLAS_WORKSPACE_BYTES["hopper" if _is_hopper_or_newer(gpu) else "other"]
    vocab = SLACK_PER_TOKEN_VOCAB * (EXPANDABLE_VOCAB_FACTOR if expandable else 1.0)
    setting = "expandable segments" if expandable else "no expandable segments"
    return DeviceOverheads(cuda_context_bytes=CUDA_CONTEXT_BYTES, cublas_workspace_bytes=ws,
                           allocator_slack_bytes=ALLOCATOR_SLACK_BYTES,
                           allocator_slack_bytes_per_token_hidden=SLACK_PER_TOKEN_HIDDEN,
                           allocator_slack_bytes_per_token_vocab=vocab, source=f"{SOURCE}; {setting}")
