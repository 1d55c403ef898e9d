"""`plan --fixed` on an architecture seen for the first time: cold (empty cache) and cached.

Goal: <= 20 s cold on 2 cores, <= 1 s cached. Exit code 1 = measured, the model does not fit the card. Each family's default config (transformers' own, which for
most equals a released checkpoint) is written as config.json; each run is a fresh interpreter with a fresh
VRAMPLAN_CACHE for the cold run and the same cache for the cached runs. Writes
benchmarks/results/first-sight.json.

    python -m benchmarks.first_sight [--families olmo2,gemma3_text,gpt_oss] [--cached-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = ("olmo2", "gemma3_text", "granite", "smollm3", "gpt_oss", "qwen3_next", "deepseek_v3")


def write_config(family: str, folder: Path) -> None:
    from transformers import AutoConfig

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(AutoConfig.for_model(family).to_dict(), default=str))


def run_once(folder: Path, cache: Path) -> tuple[float, float, int, str]:
    """(wall s, CPU s of the child, exit code, stderr tail). CPU time is what a busy machine cannot
    inflate: the wall time of a shared machine includes waiting for a core."""
    cmd = [sys.executable, "-m", "planner", "--model", str(folder), "--gpu", "H100", "--fixed", "--method", "lora",
           "--format", "json", "--offline"]
    env = {**os.environ, "VRAMPLAN_CACHE": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.returncode, out.stderr[-300:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--cached-runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "first-sight.json")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            folder, cache = Path(tmp) / family, Path(tmp) / f"cache-{family}"
            write_config(family, folder)
            load = os.getloadavg()[0]
            cold, cold_cpu, rc, err = run_once(folder, cache)
            cached = [run_once(folder, cache)[:2] for _ in range(args.cached_runs)]
            rows[family] = {"cold_s": round(cold, 2), "cold_cpu_s": round(cold_cpu, 2),
                            "cached_median_s": round(statistics.median(w for w, _ in cached), 3),
                            "cached_cpu_median_s": round(statistics.median(c for _, c in cached), 3),
                            "load_average_before": round(load, 2), "exit_code": rc,
                            **({"stderr_tail": err} if rc not in (0, 1) else {})}
            print(family, rows[family], flush=True)
    result = {"command": "plan --model DIR --gpu H100 --fixed --method lora --format json --offline",
              "goal": {"cold_s": 20, "cached_s": 1}, "cpus": os.cpu_count(), "python": platform.python_version(),
              "load_average": os.getloadavg()[0], "families": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
