"""Speed and memory of the fake-tensor simulation (runner.simulate) on full-size models.

    python -m benchmarks.simulate_speed [--quick] [--out benchmarks/results/simulate-speed.json]

Each case runs in a fresh interpreter: imports and a tiny warm-up trace first (not timed), then one
timed simulate_step (wall and CPU seconds: the trace is single-threaded Python, so CPU seconds are
what an idle core takes when the machine is shared); the child's peak RSS shows that nothing
full-size was allocated. The results
also carry what the trace saw (peak, phases, categories at the peak), so they double as reference
figures for the analytic memory model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("Qwen2.5-7B", "Llama-3.1-8B")
SEQS = (512, 2048, 8192)
CONFIGS = {  # name -> TrainConfig fields
    "lora": {"finetuning_type": "lora", "dtype": "bf16", "gradient_checkpointing": True},
    "lora-no-ckpt": {"finetuning_type": "lora", "dtype": "bf16", "gradient_checkpointing": False},
    "full-bf16": {"finetuning_type": "full", "dtype": "bf16", "gradient_checkpointing": True},
}
BIG = [("Llama-3.1-70B", 2048, "lora"), ("Llama-3.1-70B", 2048, "full-bf16")]
TINY = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 512}

_CHILD = """
import json, resource, sys, time
from planner.model.catalog import find_model
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig
from runner.simulate import simulate_step
model, seq, fields, tiny = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
train = TrainConfig(**fields)
simulate_step(ModelSpec.from_config(tiny, name="tiny"), train, batch_size=1, seq_len=16)
spec = find_model(model).spec
t, c = time.perf_counter(), time.process_time()
mem = simulate_step(spec, train, batch_size=1, seq_len=seq)
seconds, cpu = time.perf_counter() - t, time.process_time() - c
print(json.dumps({"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "peak_tensor_bytes": mem.peak_tensor_bytes, "peak_phase": mem.peak_phase,
                  "activation_bytes": mem.activation_bytes, "phases": mem.phases,
                  "categories_at_peak": mem.categories_at_peak, "attention_ops": sorted(mem.attention_ops),
                  "stack": mem.stack, "notes": list(mem.notes)}))
"""


def run_case(model: str, seq: int, config: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, model, str(seq), json.dumps(CONFIGS[config]),
                          json.dumps(TINY)], capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_seconds"] = round(time.perf_counter() - started, 2)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one model, 2048 tokens, no 70B")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "simulate-speed.json")
    args = parser.parse_args()
    cases = [(m, s, c) for m in MODELS for s in SEQS for c in CONFIGS]
    if args.quick:
        cases = [(MODELS[0], 2048, c) for c in CONFIGS]
    else:
        cases += BIG
    load = [round(x, 2) for x in os.getloadavg()]
    rows = []
    for model, seq, config in cases:
        res = run_case(model, seq, config)
        rows.append({"model": model, "seq_len": seq, "batch_size": 1, "config": config,
                     "train": CONFIGS[config], **res})
        if "error" in res:
            print(f"{model:14s} {seq:5d} {config:13s} ERROR {res['error']}")
            continue
        print(f"{model:14s} {seq:5d} {config:13s} trace {res['seconds']:6.1f} s (cpu {res['cpu_seconds']:5.1f} s)  rss {res['rss_bytes'] / 2**30:4.2f} GiB"
              f"  peak {res['peak_tensor_bytes'] / 2**30:7.2f} GiB ({res['peak_phase']})"
              f"  activations {res['activation_bytes'] / 2**30:6.2f} GiB", flush=True)
    out = {"what": "runner.simulate.simulate_step: one warm-started step, batch 1, traced with fake tensors",
           "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "load_average_at_start": load},
           "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
