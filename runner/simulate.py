"""Oracle 2, fake-tensor simulation: the tensor accounting of runner.accounting on full-size models.

The model is built and trained inside torch's FakeTensorMode: every tensor has shape, dtype, device
and storage size but no data, so a 7B-70B step is traced in seconds without allocating. The same
StorageTracker (runner.accounting) sits on top of the fake mode and sees the same aten ops the CPU
would run, because fake tensors keep device "cpu" and go through the CPU dispatch decisions (sdpa
picks aten._scaled_dot_product_flash_attention_for_cpu, see StepMemory.attention_ops).

The optimizer step runs under fake mode too (torch's AdamW foreach/for-loop/fused and SGD all do),
so optimizer states and the step's temporaries are measured, not derived.

What fake mode cannot run: bitsandbytes quantization and 8-bit/paged optimizers (CUDA kernels with
no fake implementation). simulate_step raises runner.build.NeedsCuda for those, so the CLI can fall
back to the analytic model and say so.

    >>> simulate_step(spec, TrainConfig(finetuning_type="lora"), batch_size=1, seq_len=4096).peak_tensor_bytes
"""

from __future__ import annotations

import time

from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig
from runner.accounting import StepMemory, describe, run_tracked


def simulate_step(spec: ModelSpec, train: TrainConfig, *, batch_size: int, seq_len: int,
                  steps: int = 1, warm_start: bool = True) -> StepMemory:
    """Tensor accounting of training steps of the full-size model, traced with fake tensors.

    By default one warm-started step: the steady state (optimizer states alive, and gradients when
    accumulating), which holds the peak of any step; see runner.accounting.run_tracked.

        >>> simulate_step(spec, TrainConfig(finetuning_type="full", dtype="bf16"), batch_size=1, seq_len=2048)
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from runner.build import build_model, check_oracle_runnable, make_batch, resolve_attn

    started = time.perf_counter()
    check_oracle_runnable(train)
    attn, note = resolve_attn(spec, train)
    notes = [note] if note else []
    # Built on the meta device (no init cost), then every parameter and buffer becomes a fake CPU
    # tensor. Building inside FakeTensorMode instead fails at peft's adapter dtype cast (nn.Module
    # swaps fake parameters, and the fake converter's memo holds weakrefs that forbid the swap).
    model = build_model(spec, train, device="meta", attn=unpadded_sdpa() if attn == "sdpa" else attn)
    fake_mode = FakeTensorMode()
    to_fake(model, fake_mode, torch.device("cpu"))
    # Fake tensors report storage sizes, but nothing is computed: the oracle is exact for shapes and
    # lifetimes, and blind to data-dependent paths (none in a dense decoder's training step).
    with fake_mode:
        batch = make_batch(spec.vocab_size, batch_size, seq_len, attention_mask=False)
        return run_tracked(model, train, batch, steps=steps, warm_start=warm_start, mode="fake", started=started,
                           config=describe(spec, train, batch_size, seq_len, attn), notes=notes)


def unpadded_sdpa() -> str:
    """Register (once) and name an attention implementation: stock sdpa, with a mask function that
    knows the rows are unpadded and unpacked.

    For such rows transformers' sdpa_mask returns None and sdpa runs is_causal (flash kernel, k/v not
    repeated for GQA). It decides that by reading the position ids and the padding mask, which it
    cannot do for fake tensors (masking_utils.is_tracing): it would build a (b, 1, s, s) mask and
    repeat k/v instead. This mask function gives the answer transformers gives for real tensors of
    this batch; tests/runner/test_simulate.py checks fake == real accounting.
    """
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import (
        AttentionMaskInterface,
        sdpa_mask,
        sliding_window_causal_mask_function,
    )

    def unpadded_sdpa_mask(*, kv_length: int, attention_mask=None, local_size: int | None = None, **kwargs):
        if attention_mask is not None:  # not what the oracles pass; let transformers decide
            return sdpa_mask(kv_length=kv_length, attention_mask=attention_mask, local_size=local_size, **kwargs)
        if local_size is None or kv_length < local_size:
            return None  # is_causal
        # A sliding window shorter than the rows: the (1, 1, s, s) mask transformers builds for unpacked
        # rows (fake position ids would make it treat them as packed, with a per-row mask).
        kwargs.update(mask_function=sliding_window_causal_mask_function(local_size), allow_is_causal_skip=True)
        return sdpa_mask(kv_length=kv_length, local_size=local_size, **kwargs)

    if _UNPADDED_SDPA not in AttentionMaskInterface._global_mapping:
        AttentionInterface.register(_UNPADDED_SDPA, sdpa_attention_forward)
        AttentionMaskInterface.register(_UNPADDED_SDPA, unpadded_sdpa_mask)
    return _UNPADDED_SDPA


_UNPADDED_SDPA = "sdpa_unpadded_rows"


def to_fake(model, fake_mode, device) -> None:
    """Replace the meta parameters and buffers of `model` by fake tensors on `device`, in place.

    Tied parameters (one Parameter in two modules) stay one Parameter.
    """
    import torch

    conv = fake_mode.fake_tensor_converter
    memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(meta) -> (meta kept alive, fake)

    def fake(t: torch.Tensor, param: bool) -> torch.Tensor:
        if id(t) not in memo:
            f = conv.from_meta_and_device(fake_mode, t.detach(), device)
            memo[id(t)] = (t, torch.nn.Parameter(f, requires_grad=t.requires_grad) if param else f)
        return memo[id(t)][1]

    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = fake(p, True)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = fake(b, False)


def simulate_cli(spec: ModelSpec, train: TrainConfig, batch_size: int, seq_len: int) -> dict:
    """`plan --simulate`: the fake-tensor result as JSON, or why it could not run.

    Returns {"ok": True, **StepMemory.to_json()} or {"ok": False, "reason": ..., "fallback": "analytic"}.
    """
    from runner.build import NeedsCuda

    try:
        return {"ok": True, **simulate_step(spec, train, batch_size=batch_size, seq_len=seq_len).to_json()}
    except NeedsCuda as e:
        return {"ok": False, "reason": str(e), "fallback": "analytic"}
