"""Which scaled_dot_product_attention kernel runs for the inputs a k-bit recipe produces, and what it costs.

peft's prepare_model_for_kbit_training upcasts norms and embeddings to fp32, so q/k/v reach SDPA in fp32;
transformers passes grouped-query heads with enable_gqa=True and no mask (is_causal) for unpadded rows.
The flash kernel takes only 16-bit inputs; whether another fused kernel takes fp32 + GQA decides if the
attention matrix (heads x s^2) is materialized. Each shape and dtype is tried with each backend alone,
then with PyTorch's own choice, forward + backward, and the allocator's peak above the inputs recorded.

    python -m benchmarks.question_sdpa --out /tmp/sdpa.json    # CUDA only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

NAME = "q-sdpa-kernels-fp32-gqa"
# (label, heads, kv heads, sequence, head dim): Llama-3.1-8B, Qwen2.5-7B, Qwen2.5-1.5B attention shapes
SHAPES = [("llama-3.1-8b", 32, 8, 8192, 128), ("qwen2.5-7b", 28, 4, 4096, 128), ("qwen2.5-1.5b", 12, 2, 4096, 128)]


def trial(torch, heads: int, kv: int, seq: int, dim: int, dtype, backend) -> dict[str, Any]:
    from torch.nn.attention import sdpa_kernel

    q = torch.randn(1, heads, seq, dim, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(1, kv, seq, dim, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(1, kv, seq, dim, device="cuda", dtype=dtype, requires_grad=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        ctx = sdpa_kernel([backend]) if backend is not None else _null()
        with ctx:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            out.sum().backward()
        torch.cuda.synchronize()
        res = {"ok": True, "peak_over_inputs_bytes": torch.cuda.max_memory_allocated() - base}
    except Exception as e:
        res = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    del q, k, v
    torch.cuda.empty_cache()
    return res


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    import torch
    from torch.nn.attention import SDPBackend

    from runner.report import measurement_stack

    started = time.perf_counter()
    res: dict[str, Any] = {"config": {"name": NAME, "group": "questions", "model": "sdpa"}, "device": "cuda",
                           "status": "error", "stack": measurement_stack(torch)}
    if not torch.cuda.is_available():
        res["error"] = "needs CUDA"
    else:
        res["gpu"] = {"name": torch.cuda.get_device_name(0)}
        # SDPBackend is a pybind11 enum (not iterable): name the kernels one by one
        backends = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                    "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
        rows = []
        for label, h, kv, s, d in SHAPES:
            for dtype in (torch.float32, torch.bfloat16):
                row = {"shape": label, "heads": h, "kv_heads": kv, "seq": s, "head_dim": d,
                       "dtype": str(dtype).replace("torch.", ""),
                       "attention_matrix_fp32_bytes": h * s * s * 4}
                for name, b in backends.items():
                    row[name] = trial(torch, h, kv, s, d, dtype, b)
                rows.append(row)
        res["answer"] = {"sdpa": {"rows": rows, "summary": "; ".join(
            f"{r['shape']} {r['dtype']}: default peak {_gib(r['default'])} GiB, fused kernels ok: "
            + ",".join(n for n in backends if n not in ("default", "math") and r[n].get("ok")) for r in rows)}}
        res["status"] = "ok"
    res["timing"] = {"total_seconds": round(time.perf_counter() - started, 3)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res.get("answer", res.get("error")))[:3000], file=sys.stderr)
    return 0


def _gib(r: dict[str, Any]) -> str:
    return f"{r['peak_over_inputs_bytes'] / 2**30:.2f}" if r.get("ok") else "x"


if __name__ == "__main__":
    sys.exit(main())
