"""The device-overhead model against published pairs of peak allocated and reserved / nvidia-smi memory.

    python -m benchmarks.published_overheads            # table + summary; writes benchmarks/results/published.md
    python -m benchmarks.published_overheads --check    # exit 1 unless the goal holds (used by the tests)

Input: benchmarks/results/published-pairs.csv (one row per published measurement, with its source URL).
For each row the planner's uncalibrated overheads (planner.memory.overheads.default_overheads, with the
allocator setting of the run: none of these used expandable segments) turn the *measured* allocated peak
into a predicted reserved peak and device peak, compared with what was measured. This checks the part of
the memory model that lives outside the tensors; the tensor part is checked against the CPU oracles
(benchmarks/memory_error_table.py). A second table predicts the whole device peak from the config alone
(tensor model + overheads) where vramplan can plan the published config.

Goal (issue: never plan an OOM): on the included rows, the predicted peak is never below the measured one
by more than 3%, and the median |error| is at most 5%.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

from planner.hardware.gpus import parse_gpu
from planner.memory.overheads import default_overheads
from planner.units import GIB

ROOT = Path(__file__).resolve().parents[1]

PAIRS = ROOT / "benchmarks" / "results" / "published-pairs.csv"
OUT = ROOT / "benchmarks" / "results" / "published.md"
WORST_UNDER = -0.03
MEDIAN_ABS = 0.05
# configs vramplan can plan exactly as published (fms-acceleration scenarios.yaml + defaults.yaml: fp16
# weights, LoRA r16 alpha16 on q/k/v/o, gradient checkpointing, flash attention, AdamW, 4096-token rows)
END_TO_END = {("Mistral-7B-v0.1", "lora"), ("Mistral-7B-v0.1", "qlora")}


def load_pairs(path: Path = PAIRS) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("allocated_bytes", "measured_bytes", "tokens", "hidden", "vocab_materialized", "gpus", "micro_batch"):
            r[k] = int(r[k])
    return rows


def predict(row: dict, overheads=None) -> int:
    """Predicted peak of the kind the row measured (reserved or device) from its measured allocated peak."""
    oh = overheads or default_overheads(parse_gpu("A100-80G"), expandable="expandable" in row["allocator"]
                                        and "no expandable" not in row["allocator"])
    reserved = oh.reserved_from_allocated(row["allocated_bytes"], tokens=row["tokens"], hidden=row["hidden"],
                                          vocab=row["vocab_materialized"])
    return reserved + (oh.cuda_context_bytes if row["kind"] == "device" else 0)

def fms_train_config(row):
    """The TrainConfig of one fms-acceleration reference row (LoRA r16 on attention, 4096 tokens, fp16)."""
    from planner.train_config import TrainConfig

    q = 4 if row["method"] == "qlora" else None
    train = TrainConfig(finetuning_type="lora", quantization_bit=q, dtype="fp16", amp="fp16" if q else None,
                        cutoff_len=4096, per_device_train_batch_size=row["micro_batch"], lora_rank=16, lora_alpha=16,
                        lora_dropout=0.0, lora_target=("q_proj", "k_proj", "v_proj", "o_proj"),
                        gradient_checkpointing=True, attn_implementation="flash_attention_2",
                        use_liger_kernel=False, optim="adamw_torch",
                        trainer="peft")  # fms-acceleration trains with HF Trainer + peft: the k-bit upcast
    return train


def end_to_end(row: dict) -> int | None:
    """The whole device peak predicted from the config (tensor model + overheads), or None."""
    if (row["model"], row["method"]) not in END_TO_END or row["gpus"] != 1 or "accelerated" in row["label"]:
        return None  # fms's accelerated-peft-bnb runs its own quantized kernels: not what vramplan plans
    from planner.hardware.gpu_spec import GpuSetup
    from planner.memory import estimate_memory
    from planner.model.resolve import resolve_model

    train = fms_train_config(row)
    setup = GpuSetup(parse_gpu("A100-80G"))
    mb = estimate_memory(resolve_model(row["model"]), train, setup,
                         overheads=default_overheads(setup.gpu, expandable=False))
    return mb.peak_bytes


def summarize(errors: list[float]) -> dict:
    return {"n": len(errors), "worst_under": min(errors), "worst_over": max(errors),
            "median_abs": statistics.median(abs(e) for e in errors)}


def run() -> tuple[str, dict]:
    rows = load_pairs()
    oh = default_overheads(parse_gpu("A100-80G"), expandable=False)
    lines = ["# Device memory beyond the tensors: published pairs", "",
             "Written by `python -m benchmarks.published_overheads` from `benchmarks/results/published-pairs.csv`.",
             "Each row: a published peak *allocated* (torch `max_memory_allocated`, or FSDP's peak active) and the",
             "*reserved* (`max_memory_reserved`) or *device* (nvidia-smi) peak of the same run. vramplan's",
             "uncalibrated device model (`planner/memory/overheads.py`) predicts the second from the first:",
             "", f"    reserved = allocated + {oh.allocator_slack_bytes / GIB:.2f} GiB + {oh.allocator_slack_bytes_per_token_hidden:g} B x "
             f"tokens x hidden + {oh.allocator_slack_bytes_per_token_vocab:g} B x tokens x vocab (if logits are materialized)",
             f"    device   = reserved + {oh.cuda_context_bytes / GIB:.2f} GiB CUDA context", "",
             "(the vocabulary term is halved with `expandable_segments:True`, which none of these runs used).", "",
             "| source | run | micro batch | tokens | kind | allocated GiB | measured GiB | predicted GiB | error | used |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    errors, by_source = [], {}
    for r in rows:
        pred = predict(r)
        err = (pred - r["measured_bytes"]) / r["measured_bytes"]
        used = r["included"] == "yes"
        if used:
            errors.append(err)
            by_source.setdefault(r["source"], []).append(err)
        lines.append(f"| [{r['source']}]({r['url']}) | {r['model']} {r['label']} ({r['gpus']} GPU) | {r['micro_batch']} | "
                     f"{r['tokens']} | {r['kind']} | {r['allocated_bytes'] / GIB:.2f} | {r['measured_bytes'] / GIB:.2f} | "
                     f"{pred / GIB:.2f} | {err:+.1%} | {'yes' if used else 'no: ' + r['why_excluded']} |")
    s = summarize(errors)
    ok = s["worst_under"] >= WORST_UNDER and s["median_abs"] <= MEDIAN_ABS
    lines += ["", f"**Included: {s['n']} pairs from {len(by_source)} sources; predicted never below measured by more than "
              f"{-s['worst_under']:.1%} (goal 3%), at most {s['worst_over']:.1%} above; median |error| "
              f"{s['median_abs']:.1%} (goal 5%): {'met' if ok else 'NOT met'}.**", ""]
    for src, errs in by_source.items():
        ss = summarize(errs)
        lines.append(f"- {src}: {ss['n']} pairs, worst under {ss['worst_under']:+.1%}, median |error| {ss['median_abs']:.1%}")
    lines += ["", "## End to end: the whole device peak from the config alone", "",
              "Where vramplan can plan the published config as run (fms-acceleration single-GPU Mistral-7B rows on the",
              "stock stack), the tensor model and the device model together, against nvidia-smi:", "",
              "| run | micro batch | predicted allocated GiB | measured allocated GiB | predicted device GiB | measured device GiB | error |",
              "|---|---|---|---|---|---|---|"]
    e2e = []
    for r in rows:
        if r["included"] != "yes":
            continue
        dev = end_to_end(r)
        if dev is None:
            continue
        err = (dev - r["measured_bytes"]) / r["measured_bytes"]
        e2e.append(err)
        alloc = _allocated_of(r)
        lines.append(f"| {r['model']} {r['label']} | {r['micro_batch']} | {alloc / GIB:.2f} | "
                     f"{r['allocated_bytes'] / GIB:.2f} | {dev / GIB:.2f} | {r['measured_bytes'] / GIB:.2f} | {err:+.1%} |")
    if e2e:
        lines += ["", f"End to end: {len(e2e)} runs, worst under {min(e2e):+.1%}, median |error| "
                  f"{statistics.median(abs(e) for e in e2e):.1%}."]
    lines += ["", "## How the rows were chosen", "",
              "- Used: runs of the stack vramplan plans (HF Trainer + peft, bitsandbytes, Liger; one GPU or data",
              "  parallel), whose peak is below the card's limit.",
              "- llama-cookbook#41 ran FSDP, but it gives peak active and peak reserved, both inside the allocator,",
              "  so FSDP's own buffers are on both sides; fms-acceleration's FSDP rows give nvidia-smi, which adds",
              "  NCCL buffers outside the allocator that vramplan does not model for FSDP: not used.",
              "- Not used, and why, in the last column: FSDP runs with nvidia-smi figures; runs with",
              "  fms-acceleration's own fused cross-entropy/LoRA kernels (their temporaries are not modelled; one of",
              "  them shows 14.5 GiB of slack at 4 rows and 2.0 GiB at 8); runs whose nvidia-smi peak sits at the",
              "  card's limit (the caching allocator frees its cache and retries before it raises an OOM, so there",
              "  the figure is the card, not the run).",
              "- Tokens per step: fms-acceleration rows are micro batch x 4096 (its benchmark packs alpaca into",
              "  4096-token rows; vramplan's tensor model predicts the measured allocated peak of the Mistral-7B",
              "  LoRA rows within 2% at that length, see above); llama-cookbook#41 is batch 4 x 4096 (its default",
              "  packed context); peft#1469 rows are short sequence-classification inputs (tokens taken as 0).",
              "- The constants were chosen on these same rows (in-sample): they are the evidence until a card",
              "  calibration (benchmarks/calibrate.py, `plan calibrate`) replaces them for that card.",
              "- Software: fms-acceleration torch 2.4.1 / transformers 4.45.2 / peft 0.13.2 / bitsandbytes 0.43.3,",
              "  A100-SXM4-80GB, default allocator; llama-cookbook#41 4 x A100-40GB, PyTorch 2.1 nightly; peft#1469",
              "  peft main, torchtune's get_memory_stats after optimizer.step()."]
    return "\n".join(lines) + "\n", {"overall": s, "ok": ok, "sources": len(by_source),
                                     "end_to_end": summarize(e2e) if e2e else None}


def _allocated_of(row: dict) -> int:
    from planner.hardware.gpu_spec import GpuSetup
    from planner.memory import estimate_memory
    from planner.model.resolve import resolve_model

    train = fms_train_config(row)
    return estimate_memory(resolve_model(row["model"]), train, GpuSetup(parse_gpu("A100-80G"))).allocated_bytes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 unless the goal holds; write nothing")
    args = p.parse_args(argv)
    text, summary = run()
    if args.check:
        print(summary)
        return 0 if summary["ok"] and summary["overall"]["n"] >= 15 and summary["sources"] >= 3 else 1
    OUT.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
