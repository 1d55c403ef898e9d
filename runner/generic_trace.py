"""Activation terms of any causal LM from fake-tensor traces of a shortened copy.

The full model is built on the meta device; a shortened copy keeps one decoder layer of each distinct
kind (runner.generic.layer_kinds: full / sliding / chunked / linear attention, dense / MoE, ...), and
one more copy per kind adds one more layer of that kind. Each copy is traced with fake tensors (the
StorageTracker of runner.accounting under FakeTensorMode, as runner.simulate) at two sequence lengths
(three for eager attention, whose s x s scores are fitted on their own). Per phase, the bytes above
the model states are

    Q_full(s) = Q_base(s) + sum_k (n_k - 1) * (Q_base+k(s) - Q_base(s))

(n_k layers of kind k in the full model), then fitted as Lin(tok, tok_s, const) in the tokens of a
batch: exact while a phase's peak sits where every layer's saved tensors are alive (the head, or the
recompute of one layer under checkpointing), which is where it sits in a decoder's step.

    >>> fit_activations(lm_config, facts, {"method": "lora", "dtype": "bf16", "gc": True, "attn": "sdpa", ...})
"""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Any

from planner.train_config import TrainConfig
from runner.generic import shortened

_PERSISTENT = ("weights", "trainable", "inputs", "optimizer_state", "other")
LENGTHS = (128, 256, 512)  # fake tensors cost the same at any length; loops over chunks do not


def lengths_for(attn: str, window: int | None) -> tuple[int, ...]:
    """Trace lengths: below any sliding window (where a mask would appear), three for eager."""
    n = 3 if attn == "eager" else 2
    cap = window if isinstance(window, int) and window >= 64 else None
    # strictly below: at s == window transformers already builds the sliding mask
    out = [s for s in LENGTHS if cap is None or s < cap]
    if len(out) < n:  # a short window: lengths below it
        out = [max(8, cap // (2 ** j)) for j in range(1, n + 1)][::-1] if cap else list(LENGTHS)
    return tuple(out[:n])


def _train(key: dict[str, Any]) -> TrainConfig:
    return TrainConfig(finetuning_type=key["method"], dtype=key["dtype"], amp=key.get("amp"),
                       lora_rank=int(key.get("lora_rank", 8)), lora_dropout=float(key.get("lora_dropout", 0.0)),
                       lora_target=tuple(key.get("lora_target", ("all",))), use_dora=bool(key.get("dora", False)),
                       gradient_checkpointing=bool(key["gc"]), attn_implementation=key["attn"],
                       gradient_accumulation_steps=1, optim="adamw_torch_fused")


def _trace(model_meta, prefix: str, keep: list[int], train: TrainConfig, lengths: tuple[int, ...],
           vocab: int) -> dict[int, dict]:
    """Terms of the shortened copy keeping layers `keep`, one traced step per length (one build)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from runner.build import apply_lora, enable_checkpointing, make_batch
    from runner.simulate import to_fake

    model = shortened(model_meta, prefix, keep)
    layers = list(model.get_submodule(prefix))  # peft wraps modules in place: the same objects after LoRA
    if train.gradient_checkpointing:
        enable_checkpointing(model)
    if train.finetuning_type == "full":
        model.requires_grad_(True)
    else:
        model.requires_grad_(False)
        model = apply_lora(model, train)
    fake_mode = FakeTensorMode()
    to_fake(model, fake_mode, torch.device("cpu"))
    out = {}
    for seq_len in lengths:
        with fake_mode:
            batch = make_batch(vocab, 1, seq_len, attention_mask=False)
            out[seq_len] = _terms(_run(model, train, batch, layers), len(layers))
        for p in model.parameters():
            p.grad = None  # each length starts from the same state
    return out


def _run(model, train: TrainConfig, batch: dict, layers: list):
    """Forward and backward of one micro-batch under a StorageTracker (runner.accounting), without the
    optimizer step: only the bytes above the model states are kept, so the states need not exist.

    Backward is cut into windows: a mark "layer<p>" when the gradient of kept layer p's output arrives
    (its backward, and under checkpointing its recompute, run in that window). Full fine-tuning of a
    deep model peaks in the low layers' windows, with the gradients of every layer above alive; "layer0"
    (the first layer, then the embeddings) is the tail."""
    from runner.accounting import make_tracker
    from runner.step import forward_loss

    tracker = make_tracker(model, None, checkpointing=train.gradient_checkpointing)
    tracker.register_model(batch)
    tracker.phase = "warm"  # the next mark("forward") starts step 1

    def hook(pos: int):
        def on_grad(_grad) -> None:
            if tracker.phase == "backward" or tracker.phase.startswith("layer"):
                tracker.mark(f"layer{pos}")

        def on_output(_module, _args, output) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if getattr(out, "requires_grad", False) and tracker.phase == "forward":
                out.register_hook(on_grad)
        return on_output

    handles = [layer.register_forward_hook(hook(pos)) for pos, layer in enumerate(layers)]
    try:
        with tracker:
            tracker.mark("forward")
            loss = forward_loss(model, batch, train)
            tracker.mark("backward")
            loss.backward()
            del loss
            tracker.mark("optimizer")  # counts the .grad tensors as gradients
    finally:
        for h in handles:
            h.remove()
    return tracker


def _terms(tracker, n_layers: int) -> dict[str, Any]:
    """Bytes above the model states at each phase's peak, gradients apart."""
    def above(phase: str) -> tuple[int, int]:
        if (1, phase) not in tracker.peaks:
            return 0, 0
        total, tick = tracker.peaks[(1, phase)]
        cats = tracker.categories_at(tick)
        return total - sum(cats[c] for c in _PERSISTENT) - cats["gradients"], cats["gradients"]

    fwd, _ = above("forward")
    bwd, bwd_grads = above("backward")
    tail, tail_grads = above("layer0")
    _, end_grads = above("optimizer")
    return {"forward": fwd, "backward": bwd, "backward_grads": bwd_grads, "tail": tail,
            "tail_grads": tail_grads, "grads_end": end_grads, "saved": tracker.saved.get(1, 0),
            "windows": [above(f"layer{p}") for p in range(n_layers)]}


def _windows(traced, subsets, kinds: list[int], second: dict[int, int], lengths) -> list[dict[str, list]]:
    """Each traced layer window moved to the full model: a window of original layer i holds the saved
    tensors of every layer below i and the gradients of every layer above i; per layer of kind m those
    are S_m = saved(+m) - saved(base) and G_m = grads_end(+m) - grads_end(base), measured."""
    out = []
    for name, keep in subsets.items():
        for pos, i in enumerate(keep):
            acts, grads = [], []
            for s in lengths:
                act, grad = traced[name][s]["windows"][pos]
                for m in second:
                    g_m = traced[m][s]["grads_end"] - traced["base"][s]["grads_end"]
                    s_m = traced[m][s]["saved"] - traced["base"][s]["saved"]
                    above = sum(1 for x in range(i + 1, len(kinds)) if kinds[x] == m) \
                        - sum(1 for x in keep if x > i and kinds[x] == m)
                    below = sum(1 for x in range(i) if kinds[x] == m) - sum(1 for x in keep if x < i and kinds[x] == m)
                    act += below * s_m
                    grad += above * g_m
                acts.append(act)
                grads.append(grad)
            out.append({"act": [*_solve(list(lengths), acts), 0.0], "grads": [*_solve(list(lengths), grads), 0.0]})
    return out


def _solve(xs: list[int], ys: list[int]) -> list[float]:
    """[tok, tok_s, const] through (s, y) points: y = tok*s + const (two) or + tok_s*s^2 (three)."""
    if len(xs) == 2:
        (s1, s2), (y1, y2) = xs, ys
        a = Fraction(y2 - y1, s2 - s1)
        return [float(a), 0.0, float(y1 - a * s1)]
    (s1, s2, s3), (y1, y2, y3) = xs, ys
    # divided differences of a quadratic
    d1, d2 = Fraction(y2 - y1, s2 - s1), Fraction(y3 - y2, s3 - s2)
    b = (d2 - d1) / (s3 - s1)
    a = d1 - b * (s1 + s2)
    return [float(a), float(b), float(y1 - a * s1 - b * s1 * s1)]


def fit_activations(config: dict[str, Any], facts, key: dict[str, Any]) -> dict[str, Any]:
    """Fitted activation terms of `key` (a training configuration) for the language model `config`
    (planner.model.generic.activation_fit reads the result; each value is [tok, tok_s, const, seq])."""
    from runner.generic import build_config, build_meta, decoder_layers
    from runner.simulate import unpadded_sdpa

    started = time.perf_counter()
    train = _train(key)
    attn = key["attn"]
    notes = []
    if attn == "flash_attention_2":
        notes.append("flash_attention_2 traced as sdpa (the CPU flash kernel saves the same tensors)")
        attn = "sdpa"
    cfg = build_config(config, where=str(config.get("model_type")))
    impl = unpadded_sdpa() if attn == "sdpa" else attn
    try:
        model = build_meta(cfg, dtype=train.dtype, attn=impl)
    except (ValueError, ImportError) as exc:  # the class has no sdpa: transformers' own fallback is eager
        notes.append(f"{attn} not supported by this model ({exc}); traced with eager")
        attn, impl = "eager", "eager"
        model = build_meta(cfg, dtype=train.dtype, attn=impl)
    kinds = list(facts.layer_kinds)
    prefix, _ = decoder_layers(model, len(kinds))
    first: dict[int, int] = {}
    second: dict[int, int] = {}
    for i, k in enumerate(kinds):
        if k not in first:
            first[k] = i
        elif k not in second:
            second[k] = i
    base = sorted(first.values())
    subsets = {"base": base, **{k: sorted([*base, i]) for k, i in second.items()}}
    counts = {k: kinds.count(k) for k in first}
    lengths = lengths_for(attn, getattr(cfg, "sliding_window", None))
    vocab = int(cfg.vocab_size)
    try:
        traced = {name: _trace(model, prefix, keep, train, lengths, vocab) for name, keep in subsets.items()}
    except RuntimeError as exc:
        if train.dtype == "bf16":
            raise
        # torch's fake kernel of grouped_mm (transformers 5 MoE experts) takes bf16 only: trace with bf16
        # weights, which drops autocast's bf16 weight copies from the terms (an underestimate by them)
        notes.append(f"traced with bf16 weights instead of {train.dtype} ({str(exc).splitlines()[0][:120]})")
        train = train.with_(dtype="bf16", amp=None)
        model = build_meta(cfg, dtype="bf16", attn=impl)
        traced = {name: _trace(model, prefix, keep, train, lengths, vocab) for name, keep in subsets.items()}
    out: dict[str, Any] = {}
    for q in ("forward", "backward", "backward_grads", "tail", "tail_grads", "grads_end", "saved"):
        ys = []
        for s in lengths:
            y0 = traced["base"][s][q]
            ys.append(y0 + sum((counts[k] - 1) * (traced[k][s][q] - y0) for k in second))
        out[q] = [*_solve(list(lengths), ys), 0.0]
    out["windows"] = _windows(traced, subsets, kinds, second, lengths)
    out.update(lengths=list(lengths), traces=len(subsets) * len(lengths), layers_traced=len(base) + 1,
               attn=attn, seconds=round(time.perf_counter() - started, 2), notes=notes)
    return out
