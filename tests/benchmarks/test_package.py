"""benchmarks/ is a package run as `python -m benchmarks.<name>` from the project root: every command the
docs, scripts and results name exists, nothing edits the import path, and a module starts from the root."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_BY_PATH = re.compile(r"python3? +benchmarks/\w+\.py")
RUN_AS_MODULE = re.compile(r"python3? +-m +benchmarks\.(\w+)")


def _texts() -> list[Path]:
    bench = ROOT / "benchmarks"
    return [ROOT / "README.md", *bench.glob("*.py"), *bench.glob("*.sh"), *bench.glob("*.md"),
            *(bench / "results").glob("*.md"), *(ROOT / "tests").rglob("*.py")]


def test_commands_name_modules_that_exist():
    named = set()
    for path in _texts():
        text = path.read_text(encoding="utf-8")
        assert not RUN_BY_PATH.search(text), f"{path.relative_to(ROOT)} runs a benchmark by path"
        named |= {(path.relative_to(ROOT), m) for m in RUN_AS_MODULE.findall(text)}
    assert len({m for _, m in named}) >= 15  # the docs name most of the package's entry points
    missing = sorted((str(p), m) for p, m in named if not (ROOT / "benchmarks" / f"{m}.py").is_file())
    assert not missing


def test_no_import_path_edits():
    edits = [str(p.relative_to(ROOT)) for p in [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "tests").rglob("*.py")]
             if "sys.path.insert" in p.read_text(encoding="utf-8") and p != Path(__file__).resolve()]
    assert not edits


def test_module_starts_from_the_root():
    """As benchmarks/gpu_session.sh runs it: from the project root, nothing on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.session", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--deadline-s" in out.stdout
