"""The README's shell blocks run as written, on a CPU machine, offline; a block that cannot run here says why.

Blocks are taken from the ```bash fences in order. `plan` is the installed command (a shim to this
interpreter's `python -m planner`, so the checkout under test is the one that runs). Commands run in a
scratch folder holding a link to the repository's profiles/, the way they run from a clone's root.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def bash_blocks(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)]


def commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            out.append(line)
    return out


def skip_reason(cmds: list[str]) -> str | None:
    """Why a block cannot run inside the test suite, or None when it must run."""
    if any(c.startswith("git clone") for c in cmds):
        return "clones the repository and makes a virtual environment: the suite already runs inside one"
    if all(c.startswith(("pip install", "python -m pip install")) for c in cmds):
        return "installs packages from the network; the suite runs in the environment these commands build"
    return None


BLOCKS = bash_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_its_two_main_commands_and_the_apply_example():
    flat = [c for b in BLOCKS for c in commands(b)]
    assert "plan --model Qwen2.5-7B --data demo --gpu RTX4090 --offline" in flat
    assert "python -m pytest" in flat
    assert any(c.startswith("plan ") and "--apply" in c for c in flat)
    for block in BLOCKS:  # the main commands and the example are never among the skipped blocks
        if any(c.startswith(("plan ", "python -m pytest")) for c in commands(block)):
            assert skip_reason(commands(block)) is None, block


def test_the_readme_says_where_the_caches_live():
    text = README.read_text(encoding="utf-8")
    assert "VRAMPLAN_CACHE" in text and "~/.cache/vramplan" in text and "VRAMPLAN_HOME" in text


@pytest.fixture()
def shell_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "plan"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m planner "$@"\n')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / "profiles").symlink_to(ROOT / "profiles", target_is_directory=True)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return work, env


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_block_runs(index, shell_env):
    cmds = commands(BLOCKS[index])
    reason = skip_reason(cmds)
    if reason:
        pytest.skip(f"README block {index + 1} ({cmds[0]!r}): {reason}")
    if any("--apply" in c or "--simulate" in c for c in cmds):
        pytest.importorskip("torch", reason=f"README block {index + 1} trains: needs the [train] extra")
    work, env = shell_env
    for cmd in cmds:
        cwd = work
        if cmd == "python -m pytest":
            # The suite itself: running it from inside would recurse. Collecting it checks the command
            # (configuration, imports of every test module) without running the tests twice.
            cmd, cwd = f'"{sys.executable}" -m pytest --collect-only -q -p no:cacheprovider', ROOT
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
        if "--apply" in cmd and "--out tiny-run" in cmd:
            assert (work / "tiny-run" / "report.json").is_file()
