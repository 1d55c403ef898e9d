"""Does BitsAndBytesConfig(load_in_4bit) quantize the fused 3-D MoE experts of transformers 5? Answer on this device.

A small Mixtral- and Qwen3-MoE-shaped model (random weights) is saved as safetensors and loaded back
through `from_pretrained(quantization_config=BitsAndBytesConfig(...))`, the path every trainer uses;
the loaded parameters are then listed by kind (experts, attention, router, ...) with their class and
dtype. Then each recipe's k-bit preparation runs on it (peft's prepare_model_for_kbit_training, or
none as LLaMA-Factory does) to show the dtype the experts end up in for training.

    python -m benchmarks.question_moe_4bit --out /tmp/moe.json            # CUDA when available, else CPU

Writes one result in the harness's format (status, config, gpu, stack) with an `answer` object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

NAME = "q-moe-4bit-fused-experts"
# Small shapes with the real structure: fused experts, top-k router, GQA attention.
SHAPES: dict[str, dict[str, Any]] = {
    "mixtral": {"model_type": "mixtral", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                "num_attention_heads": 8, "num_key_value_heads": 2, "num_local_experts": 4,
                "num_experts_per_tok": 2, "vocab_size": 1024, "max_position_embeddings": 512},
    "qwen3_moe": {"model_type": "qwen3_moe", "hidden_size": 256, "intermediate_size": 512,
                  "moe_intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 8,
                  "num_key_value_heads": 2, "head_dim": 32, "num_experts": 8, "num_local_experts": 8,
                  "num_experts_per_tok": 2, "vocab_size": 1024, "max_position_embeddings": 512},
}


def kind_of(name: str) -> str:
    n = name.lower()
    for key, kind in ((".experts.", "experts"), (".gate.", "router"), ("router", "router"), ("self_attn", "attention"),
                      ("embed", "embeddings"), ("lm_head", "lm_head"), ("norm", "norms")):
        if key in f".{n}." or key in n:
            return kind
    return "other"


def inventory(model) -> dict[str, Any]:
    """Per kind: parameter classes, dtypes, bytes, and whether any tensor is 4-bit (Params4bit / uint8)."""
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"classes": set(), "dtypes": set(), "bytes": 0,
                                                          "tensors": 0, "names": []})
    for name, p in model.named_parameters():
        k = out[kind_of(name)]
        k["classes"].add(type(p).__name__)
        k["dtypes"].add(str(p.dtype).replace("torch.", ""))
        k["bytes"] += p.numel() * p.element_size()
        k["tensors"] += 1
        if len(k["names"]) < 3:
            k["names"].append(f"{name} {tuple(p.shape)}")
    return {kind: {**v, "classes": sorted(v["classes"]), "dtypes": sorted(v["dtypes"]),
                   "quantized": "Params4bit" in v["classes"] or "uint8" in v["dtypes"]} for kind, v in out.items()}


def answer_for(model_type: str, device: str) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    from runner.build import transformers_config

    cfg = transformers_config(SHAPES[model_type])
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        AutoConfig.from_pretrained(tmp)  # the saved config reads back
        loaded = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=bnb, dtype=torch.bfloat16,
                                                      device_map={"": 0} if device == "cuda" else {"": "cpu"})
    result: dict[str, Any] = {"loaded_4bit": inventory(loaded)}
    from peft import prepare_model_for_kbit_training

    prepared = prepare_model_for_kbit_training(loaded, use_gradient_checkpointing=False)
    result["after_prepare_model_for_kbit_training"] = {
        k: {"dtypes": v["dtypes"], "bytes": v["bytes"]} for k, v in inventory(prepared).items()}
    exp = result["loaded_4bit"].get("experts", {})
    att = result["loaded_4bit"].get("attention", {})
    up = result["after_prepare_model_for_kbit_training"].get("experts", {})
    result["summary"] = (f"{model_type}: attention quantized={att.get('quantized')}, experts quantized="
                         f"{exp.get('quantized')} ({', '.join(exp.get('dtypes', []))}); after peft's "
                         f"prepare_model_for_kbit_training experts are {', '.join(up.get('dtypes', []))}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", choices=("cuda", "cpu"))
    args = ap.parse_args(argv)
    import torch

    from runner.report import measurement_stack

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    res: dict[str, Any] = {"config": {"name": NAME, "model": "mixtral+qwen3_moe (small)", "group": "questions"},
                           "device": device, "status": "error", "stack": measurement_stack(torch),
                           "gpu": {"name": torch.cuda.get_device_name(0)} if device == "cuda" else {"name": "cpu"}}
    try:
        res["answer"] = {t: answer_for(t, device) for t in SHAPES}
        res["status"] = "ok"
    except Exception as e:  # a result either way: the session keeps going
        import traceback

        res["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}"
    res["timing"] = {"total_seconds": round(time.perf_counter() - started, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    for a in (res.get("answer") or {}).values():
        print(a["summary"], file=sys.stderr)
    return 0 if res["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
