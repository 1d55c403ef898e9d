"""The analytic memory model: bytes per GPU of a fine-tuning step, by component and by phase.

    >>> from planner.memory import estimate_memory
    >>> mb = estimate_memory(spec, train, setup)
"""

from planner.hardware.calibration import DeviceOverheads
from planner.memory.breakdown import MemoryBreakdown
from planner.memory.estimate import activations_per_1k_tokens, estimate_memory
from planner.memory.overheads import default_overheads

__all__ = ["DeviceOverheads", "MemoryBreakdown", "activations_per_1k_tokens", "default_overheads",
           "estimate_memory", "render_memory"]


def render_memory(breakdown, console) -> None:
    """Rich table of a MemoryBreakdown (see planner.memory.render)."""
    from planner.memory.render import render_memory as _render

    _render(breakdown, console)
