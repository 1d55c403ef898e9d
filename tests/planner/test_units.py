"""planner.units: the byte units and the byte formatter exist once in planner/."""

from __future__ import annotations

import re
from pathlib import Path

import planner
from planner.units import GIB, MIB, gib

_OWN = re.compile(r"^(?:GIB|MIB|KIB|TIB)\b.*=|^def _?gib\(|1 << 30", re.M)


def test_formatter():
    assert gib(24 * GIB) == "24.00 GiB" and gib(3.5 * GIB, 1) == "3.5 GiB" and gib(512 * MIB, unit=False) == "0.50"
    assert gib(None) == "-" and gib(80 * GIB, 0) == "80 GiB"


def test_no_module_defines_its_own_units():
    root = Path(planner.__file__).parent
    own = [f"{p.relative_to(root)}:{s[:m.start()].count(chr(10)) + 1}"
           for p in sorted(root.rglob("*.py")) if p.name != "units.py"
           for s in [p.read_text(encoding="utf-8")] for m in _OWN.finditer(s)]
    assert own == [], "use planner.units: " + ", ".join(own)
