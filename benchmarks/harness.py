"""Run ONE measured configuration in this process and write its JSON; or, from Python, in a subprocess.

Each configuration gets a fresh process: a fresh CUDA context and an empty caching allocator, so
no measurement inherits another's cached blocks or loaded kernels.

    python -m benchmarks.harness --config '{"name": "x", "model": "tiny", "train": {"cutoff_len": 64}}' \\
        --out /tmp/x.json --device cpu
    python -m benchmarks.harness --config @case.json --out result.json          # CUDA when available

From Python (calibrate.py, accuracy.py, max_context.py, config_quality.py):

    >>> result = run_case(case, out_dir / f"{case.name}.json", device="cuda", timeout_s=240)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.matrix import Case

ROOT = Path(__file__).resolve().parents[1]


def run_case(case: Case, out: Path, *, device: str, timeout_s: float = 300.0, resume: bool = True,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    """Measure `case` in a subprocess and return its result (also written to `out`).

    resume: an existing result file is returned as is (a stopped session continues where it was).
    A subprocess that times out or dies without writing gets a result with status timeout/crashed.
    """
    if resume and out.is_file():
        try:
            return json.loads(out.read_text())
        except json.JSONDecodeError:
            pass  # half-written by a killed run: measure again
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.harness", "--config", json.dumps(case.to_json()),
           "--out", str(out), "--device", device]
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), child_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=timeout_s)
        status, tail = ("crashed", (proc.stderr or "")[-2000:]) if proc.returncode else (None, "")
    except subprocess.TimeoutExpired as e:
        status, tail = "timeout", f"no result after {timeout_s:.0f} s\n{_text(e.stderr)[-1500:]}"
    if status is None and out.is_file():
        return json.loads(out.read_text())
    result = {"config": case.to_json(), "device": device, "status": status or "crashed", "error": tail,
              "timing": {"total_seconds": round(time.perf_counter() - started, 3)}}
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def run_cases(cases: list[Case], out_dir: Path, *, device: str, timeout_s: float = 300.0,
              time_budget_s: float | None = None, resume: bool = True) -> list[dict[str, Any]]:
    """Run cases one subprocess each, in order, with progress on stderr; resumable (see run_case).

    time_budget_s: start no new case once this much wall time has passed (results so far are kept;
    running the same command again continues with the rest).
    """
    started = time.perf_counter()
    results = []
    for i, case in enumerate(cases, 1):
        out = out_dir / f"{case.name}.json"
        elapsed = time.perf_counter() - started
        if time_budget_s is not None and elapsed > time_budget_s and not (resume and out.is_file()):
            print(f"[{i}/{len(cases)}] time budget of {time_budget_s:.0f} s used: stopping before {case.name} "
                  "(run again to continue)", file=sys.stderr)
            break
        cached = resume and out.is_file()
        result = run_case(case, out, device=device, timeout_s=timeout_s, resume=resume)
        peak = result.get("peak") or {}
        gib = {k: f"{peak[k] / 2**30:.2f}" for k in ("allocated_bytes", "reserved_bytes", "device_bytes")
               if peak.get(k) is not None}
        took = (result.get("timing") or {}).get("total_seconds")
        print(f"[{i}/{len(cases)}] {case.name}: {result.get('status')}{' (cached)' if cached else ''} "
              f"GiB alloc/res/dev={gib.get('allocated_bytes', '-')}/{gib.get('reserved_bytes', '-')}/"
              f"{gib.get('device_bytes', '-')} in {took} s", file=sys.stderr, flush=True)
        results.append(result)
    return results


def _text(data: Any) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)


def default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="the case as JSON, or @FILE holding it")
    ap.add_argument("--out", required=True, type=Path, help="where to write the result JSON")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    args = ap.parse_args(argv)
    text = Path(args.config[1:]).read_text() if args.config.startswith("@") else args.config
    case = Case.from_json(json.loads(text))
    device = args.device or default_device()
    # Imported here: the parent side (run_case) never needs torch.
    from benchmarks.measure_case import measure

    result = measure(case, device=device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)  # never a half-written result
    peak = result.get("peak", {})
    print(f"{case.name}: {result['status']} allocated={peak.get('allocated_bytes')} "
          f"reserved={peak.get('reserved_bytes')} device={peak.get('device_bytes')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
