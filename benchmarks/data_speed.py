"""How fast the data analysis is: 100k and 1M alpaca-style samples through a real tokenizer and its chat
template, cold and cached, with peak memory; optionally the one-by-one transformers approach of
LLaMA-Factory's scripts/stat_utils/length_cdf.py as a reference point.

The big datasets are made here from a real alpaca file, replicated and perturbed (words dropped,
random words and numbers inserted) so the vocabulary keeps growing as it would in real data.

    python -m benchmarks.data_speed --alpaca PATH/alpaca_en_demo.json --tokenizer PATH/qwen3 \\
        [--sizes 100000,1000000] [--repeat 3] [--array] [--reference-python PATH/venv/bin/python]

Writes benchmarks/results/data-speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MODEL = {"model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
         "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
         "max_position_embeddings": 40960}


def perturb(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    out = []
    for w in words:
        r = rng.random()
        if r < 0.04:
            continue  # drop
        out.append(w)
        if r > 0.97:
            if rng.random() < 0.5:
                out.append(str(rng.randrange(10 ** rng.randrange(1, 6))))
            else:
                out.append("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randrange(3, 10))))
    return " ".join(out)


def make_dataset(alpaca: Path, n: int, out: Path, seed: int = 0) -> None:
    """JSON Lines of n alpaca records built from the real ones."""
    base = json.loads(alpaca.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    with open(out, "w", encoding="utf-8") as f:
        for i in range(n):
            r = base[i % len(base)] if i < len(base) else rng.choice(base)
            rec = {"instruction": perturb(r["instruction"], rng), "input": perturb(r.get("input", ""), rng),
                   "output": perturb(r["output"], rng)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def to_array(jsonl: Path, out: Path) -> None:
    """The same records as one JSON array, one record per line."""
    with open(jsonl, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as o:
        o.write("[\n")
        o.write(",\n".join(line.rstrip("\n") for line in f if line.strip()))
        o.write("\n]\n")


_CHILD = """
import json, os, resource, sys, time
t0 = time.perf_counter()
from planner.model.spec import ModelSpec
from planner.data import DataRequest, analyze
spec = ModelSpec.from_config({model!r}, name="Qwen3-0.6B")
req = DataRequest(data=({data!r},), tokenizer={tokenizer!r}, sample={sample!r}, use_cache={cache!r})
stats = analyze(req, spec, progress=False)
wall = time.perf_counter() - t0
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
rss = me.ru_maxrss * 1024
cpu_main, cpu_worker = me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime
cpu = cpu_main + cpu_worker
j = stats.to_json()
print(json.dumps({{"wall_s": wall, "cpu_s": cpu, "cpu_main_s": cpu_main, "cpu_worker_s": cpu_worker, "peak_rss_bytes": rss, "worker_peak_rss_bytes": kids.ru_maxrss * 1024,
                  "load_avg_1min": os.getloadavg()[0], "samples": j["samples"], "tokens": j["tokens_total"],
                  "p98": j["length"]["p98"], "cutoff_len": j["cutoff_len"], "cached": stats.cached,
                  "ci": j.get("sample", {{}}).get("percentile_ci95")}}))
"""


def run_planner(data: Path, tokenizer: str, *, sample: int | None, cache: bool, cache_dir: str) -> dict:
    """One `analyze` in a fresh interpreter (wall time includes imports; RSS is the child's peak)."""
    code = _CHILD.format(model=MODEL, data=str(data), tokenizer=tokenizer, sample=sample,
                         cache=cache)
    env = {**os.environ, "VRAMPLAN_CACHE": cache_dir,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


_REFERENCE = """
import json, sys, time
t0 = time.perf_counter()
from datasets import load_dataset
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({tokenizer!r})
ds = load_dataset("json", data_files={data!r}, split="train")
lengths = []
for r in ds:  # length_cdf.py: template encode of each sample, one at a time
    user = r["instruction"] + ("\\n" + r["input"] if r["input"] else "")
    out = tok.apply_chat_template([{{"role": "user", "content": user}}, {{"role": "assistant", "content": r["output"]}}],
                                  tokenize=True)
    lengths.append(len(out["input_ids"] if hasattr(out, "keys") else out))
import os, resource
r = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"wall_s": time.perf_counter() - t0, "cpu_s": r.ru_utime + r.ru_stime, "load_avg_1min": os.getloadavg()[0],
                  "samples": len(lengths), "tokens": sum(lengths)}}))
"""


def run_reference(python: str, data: Path, tokenizer: str, limit_s: int) -> dict:
    code = _REFERENCE.format(tokenizer=tokenizer, data=str(data))
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=limit_s, check=True)
    except subprocess.TimeoutExpired:
        return {"timed_out_after_s": limit_s}
    except subprocess.CalledProcessError as exc:
        return {"error": exc.stderr.strip().splitlines()[-1] if exc.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alpaca", type=Path, required=True, help="a real alpaca .json file to replicate")
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json + tokenizer_config.json")
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--sample", type=int, default=100000, help="--sample size for the largest dataset")
    ap.add_argument("--reference-python", help="python of a venv with datasets + transformers")
    ap.add_argument("--reference-size", type=int, default=100000)
    ap.add_argument("--repeat", type=int, default=3,
                    help="cold runs per size (this kind of machine's speed drifts by +-15%%; the median is kept)")
    ap.add_argument("--array", action="store_true",
                    help="also time the same records as one JSON array (.json, LLaMA-Factory's usual layout)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--reference-only", action="store_true",
                    help="keep the planner rows of results/data-speed.json, (re)measure only the reference")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="vramplan-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.reference_only:
        rows = json.loads((RESULTS / "data-speed.json").read_text())["runs"]
    for n in [] if args.reference_only else [int(x) for x in args.sizes.split(",")]:
        data = work / f"alpaca-{n}.jsonl"
        if not data.exists():
            t0 = time.perf_counter()
            make_dataset(args.alpaca, n, data)
            print(f"made {data} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        cache_dir = str(work / f"cache-{n}")
        for i in range(args.repeat):
            shutil.rmtree(cache_dir, ignore_errors=True)  # cold: nothing cached (the hash memo neither)
            r = run_planner(data, args.tokenizer, cache_dir=cache_dir, sample=None, cache=True)
            rows.append({"samples": n, "run": "cold", "repeat": i + 1, "file_bytes": data.stat().st_size, **r})
            print(rows[-1], file=sys.stderr)
        r = run_planner(data, args.tokenizer, cache_dir=cache_dir, sample=None, cache=True)
        rows.append({"samples": n, "run": "cached", "file_bytes": data.stat().st_size, **r})
        print(rows[-1], file=sys.stderr)
        if args.array:
            array = work / f"alpaca-{n}.json"
            if not array.exists():
                to_array(data, array)
            for i in range(args.repeat):
                shutil.rmtree(cache_dir, ignore_errors=True)
                r = run_planner(array, args.tokenizer, cache_dir=cache_dir, sample=None, cache=True)
                rows.append({"samples": n, "run": "cold, JSON array", "repeat": i + 1,
                             "file_bytes": array.stat().st_size, **r})
                print(rows[-1], file=sys.stderr)
        if n >= 1000000 and args.sample:
            r = run_planner(data, args.tokenizer, sample=args.sample, cache=False, cache_dir=cache_dir)
            rows.append({"samples": n, "run": f"--sample {args.sample}", "file_bytes": data.stat().st_size, **r})
            print(rows[-1], file=sys.stderr)
    previous = RESULTS / "data-speed.json"
    reference = json.loads(previous.read_text()).get("reference") if previous.exists() else None  # kept
    if args.reference_python:
        data = work / f"alpaca-{args.reference_size}.jsonl"
        if not data.exists():
            make_dataset(args.alpaca, args.reference_size, data)
        reference = {"samples": args.reference_size,
                     **run_reference(args.reference_python, data, args.tokenizer, limit_s=1800)}
        print(reference, file=sys.stderr)
    write(rows, reference, args)


def write(rows: list[dict], reference: dict | None, args: argparse.Namespace) -> None:
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
               "ru_maxrss_unit": "bytes"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "data-speed.json").write_text(json.dumps(
        {"machine": machine, "tokenizer": Path(args.tokenizer).name, "runs": rows, "reference": reference},
        indent=2) + "\n")
    lines = ["# Data analysis speed", "",
             f"{machine['cpus']} CPUs, Python {machine['python']}; tokenizer: {Path(args.tokenizer).name} "
             "tokenizer.json with its own chat template; alpaca-style JSON Lines made by "
             "`benchmarks/data_speed.py` from a real alpaca file (replicated, perturbed).", "",
             "Wall time of a fresh `analyze()` process (imports included). With data over 16 MB the main "
             "process loads the tokenizer, hashes the file for the cache key and hands blocks of ~1 MB of whole "
             "records (JSON Lines: lines; a JSON array: elements, found by following strings and brackets) to "
             "forked workers (one per core), which read, parse, render and count them. CPU: user+sys "
             "of the main process / of its workers summed. Peak RSS of the main process / of one worker (the "
             "workers are forks: their shared pages count in both). Load: the 1-minute load average at the "
             "end of the run. `idle s` = max(main CPU, workers CPU / 2). Cold runs are repeated: on this "
             "2-core virtual machine identical runs differ by up to +-20% in CPU time (nothing else runs in "
             "the machine; the host's neighbours do), so the median is the figure to quote.", "",
             "| samples | run | file MB | wall s | idle s | CPU s main/workers | RSS MB main/worker | load | tokens | p98 | cutoff_len |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        idle = max(r["cpu_main_s"], r["cpu_worker_s"] / 2)
        label = r["run"] + (f" #{r['repeat']}" if r.get("repeat") else "")
        lines.append(f"| {r['samples']:,} | {label} | {r['file_bytes'] / 1e6:.0f} | {r['wall_s']:.1f} | "
                     f"{idle:.1f} | {r['cpu_main_s']:.1f}/{r['cpu_worker_s']:.1f} | {r['peak_rss_bytes'] / 2**20:.0f}/{r['worker_peak_rss_bytes'] / 2**20:.0f} | "
                     f"{r['load_avg_1min']:.1f} | {r['tokens']:,} | {r['p98']}"
                     f"{' (CI ' + str(r['ci']) + ')' if r.get('ci') else ''} | {r['cutoff_len']} |")
    lines.append("")
    for n in sorted({r["samples"] for r in rows}):
        for kind in ("cold", "cold, JSON array"):
            cold = sorted((r for r in rows if r["samples"] == n and r["run"] == kind), key=lambda r: r["wall_s"])
            if cold:
                med = cold[len(cold) // 2]
                rss = max(r["peak_rss_bytes"] + 2 * r["worker_peak_rss_bytes"] for r in cold) / 2**20
                lines.append(f"- {n:,} samples {kind}: median {med['wall_s']:.1f} s wall over {len(cold)} runs "
                             f"(min {cold[0]['wall_s']:.1f}, max {cold[-1]['wall_s']:.1f}); peak RSS main + 2 "
                             f"workers at most {rss:.0f} MB (an upper bound: shared pages counted in each).")
    if reference:
        lines += ["", "Reference point: the approach of LLaMA-Factory's scripts/stat_utils/length_cdf.py "
                  "(datasets.load_dataset, then the transformers tokenizer's apply_chat_template one sample at a "
                  "time), measured in a separate virtual environment on the same file:", ""]
        if "wall_s" in reference:
            extra = [f"{reference['cpu_s']:.1f} s CPU"] if "cpu_s" in reference else []
            extra += [f"load {reference['load_avg_1min']:.1f}"] if "load_avg_1min" in reference else []
            extra += [reference["note"]] if "note" in reference else []
            lines.append(f"- {reference['samples']:,} samples: {reference['wall_s']:.1f} s wall"
                         + (f" ({', '.join(extra)})" if extra else "") + ".")
        else:
            lines.append(f"- {json.dumps(reference)}")
        colds = sorted((r for r in rows if r["samples"] == reference.get("samples") and r["run"] == "cold"),
                       key=lambda r: r["wall_s"])
        cold = colds[len(colds) // 2] if colds else None
        if cold and "tokens" in reference:
            same = "the same total as" if cold["tokens"] == reference["tokens"] else "a different total from"
            lines.append(f"- {reference['tokens']:,} tokens: {same} the planner ({cold['tokens']:,}); wall time "
                         f"{reference['wall_s'] / cold['wall_s']:.1f}x the planner's median cold run"
                         + (f", CPU time {reference['cpu_s'] / cold['cpu_s']:.1f}x (the planner uses both cores)"
                            if "cpu_s" in reference else "") + ".")
    lines += ["", "Reproduce: `python -m benchmarks.data_speed --alpaca ALPACA.json --tokenizer TOKENIZER_DIR "
              "[--array] [--reference-python VENV/bin/python]`", ""]
    (RESULTS / "data-speed.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
