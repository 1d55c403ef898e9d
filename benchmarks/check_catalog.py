"""Check the model catalog against transformers: build each entry on the meta device and count parameters.

For every entry of profiles/models/*.yaml the config is handed to transformers (remote-code families as a
LlamaConfig with the same shapes), the model is instantiated on the meta device (no memory, no download),
and sum(p.numel()) is compared with the published figure. Writes benchmarks/results/catalog-params.md.

    python -m benchmarks.check_catalog            # table on stdout + results file
    python -m benchmarks.check_catalog --tolerance 0.005 --out /tmp/params.md

Exit status 1 when any published figure is missed (beyond --tolerance, or at all where it is exact).
"""

from __future__ import annotations

import argparse
import importlib.resources
import platform
import sys
import time
from pathlib import Path
from typing import Any

import yaml

# Remote-code families whose layers are Llama-shaped: the fused projections (Baichuan W_pack, InternLM2
# wqkv) hold exactly the q/k/v parameters. Keys they name differently are mapped to LlamaConfig's.
REMOTE_AS_LLAMA = {
    "baichuan": {},
    "internlm2": {"bias": "attention_bias"},
}
# Keys that only matter to the remote code (or to loading) and that LlamaConfig would reject or misread.
REMOTE_DROP = {"model_type", "z_loss_weight", "attn_implementation", "model_max_length"}


def catalog_entries() -> list[tuple[str, dict[str, Any]]]:
    """(file name, entry) for every model in profiles/models/*.yaml, in file order."""
    root = importlib.resources.files("profiles") / "models"
    out = []
    for item in sorted(root.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".yaml"):
            doc = yaml.safe_load(item.read_text(encoding="utf-8"))
            out.extend((item.name, entry) for entry in doc["models"])
    return out


def hf_config(config: dict[str, Any]):
    """A transformers config object for a catalog config (config.json keys)."""
    from transformers import AutoConfig, LlamaConfig

    model_type = config["model_type"]
    if model_type in REMOTE_AS_LLAMA:
        renames = REMOTE_AS_LLAMA[model_type]
        kwargs = {renames.get(k, k): v for k, v in config.items() if k not in REMOTE_DROP}
        kwargs.setdefault("num_key_value_heads", config["num_attention_heads"])
        return LlamaConfig(**kwargs)
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    return AutoConfig.for_model(model_type, **kwargs)


def count_params(config: dict[str, Any]) -> int:
    """sum(p.numel()) of the transformers causal-LM built from `config` on the meta device (tied weights once)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def check(entry: dict[str, Any], computed: int, tolerance: float) -> tuple[float | None, bool]:
    """(relative difference, ok) of `computed` against the entry's published figure."""
    published = entry.get("published_params")
    if published is None:
        return None, True
    rel = (computed - published) / published
    if entry.get("published_params_exact"):
        return rel, computed == published
    return rel, abs(rel) <= tolerance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerance", type=float, default=0.005,
                        help="allowed relative difference for rounded published figures (default 0.5%%)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "catalog-params.md",
                        help="where to write the Markdown table")
    args = parser.parse_args(argv)

    import torch
    import transformers

    rows, failures = [], []
    start = time.perf_counter()
    for file_name, entry in catalog_entries():
        computed = count_params(entry["config"])
        rel, ok = check(entry, computed, args.tolerance)
        published = entry.get("published_params")
        kind = "" if published is None else ("exact" if entry.get("published_params_exact") else "rounded")
        rows.append((file_name, entry["name"], entry["config"]["model_type"], computed, published, kind, rel, ok))
        if not ok:
            failures.append(entry["name"])
        shown = "-" if published is None else f"{published:,}"
        diff = "-" if rel is None else f"{rel:+.3%}"
        print(f"{'OK ' if ok else 'BAD'} {entry['name']:<28} {computed:>16,} {shown:>16} {diff:>9} {kind}")
    seconds = time.perf_counter() - start

    lines = [
        "# Catalog parameter counts",
        "",
        "Every entry of `profiles/models/*.yaml` built with transformers on the meta device",
        "(`AutoModelForCausalLM.from_config`; remote-code `baichuan`/`internlm2` as a `LlamaConfig` with the",
        "same shapes) and counted with `sum(p.numel() for p in model.parameters())` (tied weights once).",
        f"Rounded published figures must match within {args.tolerance:.1%}; exact ones exactly.",
        "",
        f"Reproduce: `python -m benchmarks.check_catalog` (transformers {transformers.__version__}, "
        f"torch {torch.__version__}, Python {platform.python_version()}; {len(rows)} models in {seconds:.1f} s).",
        "",
        "| file | name | model_type | computed params | published | kind | difference | ok |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | --- |",
    ]
    for file_name, name, model_type, computed, published, kind, rel, ok in rows:
        shown = "-" if published is None else f"{published:,}"
        diff = "-" if rel is None else f"{rel:+.3%}"
        lines.append(f"| {file_name} | {name} | {model_type} | {computed:,} | {shown} | {kind or '-'} "
                     f"| {diff} | {'yes' if ok else '**NO**'} |")
    with_figure = sum(1 for r in rows if r[4] is not None)
    lines += ["", f"{len(rows)} models, {with_figure} with a published figure, {len(failures)} mismatches."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(rows)} models in {seconds:.1f} s; {len(failures)} mismatches; wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
