"""Several GPUs: the DeepSpeed config for the planned ZeRO stage/offload, and the torchrun relaunch.

One node: `apply` relaunches itself under torchrun (one process per GPU) and waits. Several nodes:
without --node-rank it prints the command each node runs; with it, it runs this node's.

    >>> write_deepspeed_config(TrainConfig(deepspeed_stage=2, offload="optimizer"), Path("out"))
    PosixPath('out/deepspeed.json')
    >>> torchrun_command(Path("out/plan.yaml"), Path("out"), nproc=8, nnodes=2, node_rank=1,
    ...                  master_addr="10.0.0.1", master_port=29500, extra=["--max-steps", "20"])
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from planner.train_config import TrainConfig

PARENT_ENV = "VRAMPLAN_APPLY_PARENT"


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def deepspeed_config(train: TrainConfig) -> dict | None:
    """The plan's ZeRO config: the same one `plan --out` exports (planner.exports.deepspeed_json), so the
    file a user runs by hand and the one --apply trains with cannot differ. "auto" values come from the
    TrainingArguments (runner.trainer sets bf16/fp16 from the plan's dtype when DeepSpeed is on)."""
    from planner.exports.deepspeed_json import deepspeed_config as exported

    return exported(train)


def write_deepspeed_config(train: TrainConfig, out_dir: Path) -> Path | None:
    """OUT/deepspeed.json when the plan uses DeepSpeed (stage >= 1), else None."""
    config = deepspeed_config(train)
    if not config:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "deepspeed.json"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def torchrun_command(plan_path: Path, out_dir: Path, *, nproc: int, nnodes: int = 1, node_rank: int = 0,
                     master_addr: str | None = None, master_port: int = 29500,
                     extra: list[str] | None = None) -> list[str]:
    """The torchrun command line running `python -m planner.cli.apply` (the worker entry) once per GPU of this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    if nnodes == 1:
        cmd += ["--standalone"]  # picks a free port on this machine
    else:
        cmd += ["--nnodes", str(nnodes), "--node_rank", str(node_rank),
                "--master_addr", master_addr or "MASTER_ADDR", "--master_port", str(master_port)]
    cmd += ["-m", "planner.cli.apply", "--plan", str(plan_path), "--out", str(out_dir), "--launched", *(extra or [])]
    return cmd


def node_commands(plan_path: Path, out_dir: Path, *, nproc: int, nnodes: int, master_addr: str | None,
                  master_port: int, extra: list[str] | None = None) -> list[str]:
    """One shell line per node (node 0 is the master)."""
    return [shlex.join(torchrun_command(plan_path, out_dir, nproc=nproc, nnodes=nnodes, node_rank=r,
                                        master_addr=master_addr, master_port=master_port, extra=extra))
            for r in range(nnodes)]


def launch(cmd: list[str], *, console=None) -> int:
    """Run torchrun and wait; its exit status becomes ours. The project root is put on PYTHONPATH."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env[PARENT_ENV] = "1"  # the parent renders the report; rank 0 only writes it
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too; stated so CPU ranks do not oversubscribe
    if console is not None:
        console.print(f"[dim]launching: {shlex.join(cmd)}[/]")
    return subprocess.run(cmd, env=env, check=False).returncode
