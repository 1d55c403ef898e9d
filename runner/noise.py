"""Known third-party messages that say nothing about the user's run, kept out of the output unless --debug.

Each entry is matched exactly (logger name + message start, or warning category + message), so a new or
different message from the same library still shows. `plan --debug` sets VRAMPLAN_DEBUG=1 and keeps all.

    >>> quiet_known_noise()   # before the first torch/transformers/bitsandbytes/deepspeed import
"""

from __future__ import annotations

import logging
import os
import warnings

# (logger name, message start): the logger objects exist before their libraries import, so the filter is
# in place when the library first logs (logging.getLogger returns the same object to the library).
_LOG_NOISE = (
    # bitsandbytes/backends/cpu/ops.py tries an optional kernel download at import; the CPU path works without
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    # kernels/_internals/hf_hub.py: the same optional kernel, looked up offline (HF_HUB_OFFLINE)
    ("kernels._internals.hf_hub", "Skipping publisher trust check for 'kernels-community/"),
    # deepspeed/accelerator/real_accelerator.py, on every import without CUDA (our report names the device)
    ("DeepSpeed", "Setting accelerator to CPU"),
)
# (category, message regex) for warnings.filterwarnings
_WARNING_NOISE = (
    # transformers 5 modeling_utils: peft/Trainer still call the old name; nothing for the user to change
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),
)


class _Drop(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def debugging() -> bool:
    return os.environ.get("VRAMPLAN_DEBUG", "") not in ("", "0")


def quiet_known_noise() -> None:
    """Install the filters (idempotent); nothing when debugging."""
    if debugging():
        return
    for name, start in _LOG_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.start == start for f in logger.filters):
            logger.addFilter(_Drop(start))
    for category, message in _WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
