"""Can `--out DIR` be written? Asked before any work, so a bad folder costs no plan and no training.

    >>> writable_problem(Path("/proc/nope"))
    'cannot create a folder in /proc (No such file or directory)'

The only sure test is to write: permissions, read-only mounts and pseudo file systems (/proc, /sys)
all answer differently to os.access (root passes every permission check). So a probe file is created
and removed in the first folder that exists on the way; nothing is left behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from planner.errors import UserError


def writable_problem(out: Path) -> str | None:
    """Why `out` cannot be created or written into, or None when it can."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        return "it exists and is a file, not a folder"
    existing = out
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        if existing == out:
            fd, probe = tempfile.mkstemp(prefix=".vramplan-probe-", dir=out)
            os.close(fd)
            os.unlink(probe)
        else:  # the folder would be created under `existing`: try that
            os.rmdir(tempfile.mkdtemp(prefix=".vramplan-probe-", dir=existing))
    except OSError as exc:
        what = "cannot write into it" if existing == out else f"cannot create a folder in {existing}"
        return f"{what} ({exc.strerror or type(exc).__name__})"
    return None


def check_out_dir(out: str | Path | None, *, default: str | Path | None = None) -> None:
    """UserError naming the folder and the reason when --out (or the default run folder) cannot be written."""
    target = Path(out if out else default)
    problem = writable_problem(target)
    if problem:
        where = f"--out {out}" if out else f"{target} (the default run folder)"
        raise UserError(f"{where}: {problem}.", "Choose a folder you can write to with --out DIR.")
