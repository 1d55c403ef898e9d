"""Units and how values read in a table: the byte constants and the one byte formatter.

    >>> gib(3 << 30), display_value(("q_proj", "v_proj")), human_count(7_615_616_512)
    ('3.00 GiB', 'q_proj, v_proj', '7.62B')
"""

from __future__ import annotations

from typing import Any

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30


def gib(n: int | float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def display_value(value: Any) -> str:
    """A setting as people write it in a table: None -> "-", True -> "on", ("all",) -> "all", 0.5 -> "0.5"."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ", ".join(display_value(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
