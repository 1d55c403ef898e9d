"""Units and how values read in a table: the byte constants and the one byte formatter.

Values stay in bytes (`*_bytes`) everywhere; GiB appear only where text is rendered.

    >>> gib(3 << 30), gib(3.5 * GIB, 1), display_value(("q_proj", "v_proj")), human_count(7_615_616_512)
    ('3.00 GiB', '3.5 GiB', 'q_proj, v_proj', '7.62B')
"""

from __future__ import annotations

from typing import Any

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
PIB = 1 << 50


def gib(n: int | float | None, digits: int = 2, *, unit: bool = True) -> str:
    """`n` bytes in GiB with `digits` decimals ('13.21 GiB'); unit=False: the number alone, for a column or
    a sentence that names the unit once; None: '-'."""
    if n is None:
        return "-"
    text = f"{n / GIB:.{digits}f}"
    return f"{text} GiB" if unit else text


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
