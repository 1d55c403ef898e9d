"""The generic path against the fake-tensor trace of the whole model, at full size.

For each family's default config (transformers' own), the planner's estimate (fitted traces of a
shortened copy, scaled to full depth and to the length) is compared with runner.simulate's trace of the
complete model at a length the fit never traced, per phase. Writes benchmarks/results/generic-accuracy.json.
`--path analytic` checks the torch-free analytic model of families that have one the same way
(benchmarks/results/analytic-accuracy.json).

    python -m benchmarks.generic_accuracy [--families olmo2,granite] [--seq 2048] [--path generic|analytic]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

CASES = (("lora", True), ("lora", False), ("full", True), ("full", False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="olmo2,granite")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--path", choices=("generic", "analytic"), default="generic")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.out = args.out or Path(__file__).parent / "results" / f"{args.path}-accuracy.json"

    from transformers import AutoConfig

    from planner.hardware.gpus import resolve_setup
    from planner.memory import estimate_memory
    from planner.model.generic import generic_spec
    from planner.model.resolve import resolve_model
    from planner.train_config import TrainConfig
    from runner.accounting import stack_versions
    from runner.simulate import simulate_step

    rows = []
    setup = resolve_setup("cpu", gpus=None, nodes=1)
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            folder = Path(tmp) / family
            folder.mkdir()
            config = AutoConfig.for_model(family).to_dict()
            (folder / "config.json").write_text(json.dumps(config, default=str))
            if args.path == "generic":  # the module tree, also for families with an analytic model
                spec = generic_spec(json.loads(json.dumps(config, default=str)), name=family, source_dir=folder)
            else:
                spec = resolve_model(str(folder))
                assert spec.generic is None, f"{family} has no analytic model"
            for method, gc in CASES:
                kw = {"dtype": "fp32", "amp": "bf16"} if method == "full" else {}
                train = TrainConfig(finetuning_type=method, gradient_checkpointing=gc, cutoff_len=args.seq,
                                    gradient_accumulation_steps=1, optim="adamw_torch_fused", **kw)
                started = time.perf_counter()
                mb = estimate_memory(spec, train, setup)
                fit_s = time.perf_counter() - started
                sim = simulate_step(spec, train, batch_size=1, seq_len=args.seq)
                row = {"family": family, "path": args.path,
                       "params": spec.generic.count if spec.generic else None, "method": method,
                       "dtype": train.dtype, "amp": train.amp, "gradient_checkpointing": gc, "seq_len": args.seq,
                       "predicted_peak": mb.peak_tensor_bytes, "traced_peak": sim.peak_tensor_bytes,
                       "peak_error_pct": round(100 * (mb.peak_tensor_bytes / sim.peak_tensor_bytes - 1), 3),
                       "phase_error_pct": {p: round(100 * (mb.phases[p] / sim.phases[p] - 1), 3)
                                           for p in ("forward", "backward")},
                       "estimate_s_cold": round(fit_s, 2), "full_trace_s": round(sim.seconds, 2)}
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "params"}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"stack": stack_versions(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
