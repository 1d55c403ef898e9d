"""Start-up time of the `plan` command (goal: `plan --help` well under 0.5 s on a laptop CPU).

    python -m benchmarks.startup [--runs 10]

Each run is a fresh interpreter (what a user waits for); writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    "plan --help": ["-m", "planner", "--help"],
    "plan --model Qwen2.5-7B --gpu RTX4090 --format json": [
        "-m", "planner", "--model", "Qwen2.5-7B", "--gpu", "RTX4090", "--format", "json", "--offline"],
    "python -c 'import planner.cli'": ["-c", "import planner.cli"],
}


def time_once(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "startup.json")
    args = parser.parse_args()
    results = {}
    for name, cmd in CASES.items():
        time_once(cmd)  # warm the OS file cache; Python's own bytecode cache too
        times = [time_once(cmd) for _ in range(args.runs)]
        results[name] = {"median_s": round(statistics.median(times), 4), "max_s": round(max(times), 4),
                         "runs": args.runs}
        print(f"{name:60s} median {results[name]['median_s']:.3f} s  max {results[name]['max_s']:.3f} s")
    out = {"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                       "cores": __import__("os").cpu_count()}, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
