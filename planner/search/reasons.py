"""Why the winner won: one line per choice, and the runners-up with why they lost."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from planner.search.objective import QUANTIZED_MUST_BE_FASTER, Candidate, Evaluator
from planner.search.space import Family, Space, config_for
from planner.train_config import EIGHT_BIT_OPTIMIZERS
from planner.units import gib


def _best_of(seen: list[Candidate], pred) -> Candidate | None:
    """The fastest fitting candidate matching `pred`, else the one that came closest to fitting."""
    group = [c for c in seen if pred(c)]
    fitting = [c for c in group if c.fits]
    if fitting:
        return max(fitting, key=lambda c: (c.config.cutoff_len, c.tokens_per_s))
    return min(group, key=lambda c: c.memory.peak_bytes, default=None)


def speed_phrase(tps: float, than_tps: float) -> str:
    """'24% slower (1,180 vs 1,551 tokens/s)': the word and the percentage follow the figures shown.

    >>> speed_phrase(2193, 1966)
    '12% faster (2,193 vs 1,966 tokens/s)'
    """
    a, b = round(tps), round(than_tps)
    figures = f"({a:,} vs {b:,} tokens/s)"
    if a == b or not than_tps:
        return f"as fast {figures}"
    pct = abs(tps / than_tps - 1) * 100
    amount = f"{pct:.0f}%" if round(pct) >= 1 else "<1%"
    return f"{amount} {'faster' if a > b else 'slower'} {figures}"


def _faster(c: Candidate, w: Candidate) -> bool:
    return round(c.tokens_per_s) > round(w.tokens_per_s)


def _why_not_faster(c: Candidate, w: Candidate) -> str:
    """Why a candidate the throughput model calls faster did not win: the rule that overrode speed."""
    if c.family.quantization_bit and not w.family.quantization_bit:
        return (f"a quantized config must be {QUANTIZED_MUST_BE_FASTER:g}x as fast as a fitting 16-bit one "
                "to be chosen (it adds quantization error for a small gain)")
    if c.config.cutoff_len < w.config.cutoff_len:
        return f"it fits only cutoff {c.config.cutoff_len} (< {w.config.cutoff_len}); a longer cutoff comes first"
    if c.family.finetuning_type != w.family.finetuning_type:
        return f"{c.family.finetuning_type} fine-tuning is planned only when asked (--method {c.family.finetuning_type})"
    if c.family.offload != "none" and w.family.offload == "none":
        return "offload is tried only when nothing fits on the GPUs alone"
    return f"the search compares score = tokens/s, with {QUANTIZED_MUST_BE_FASTER:g}x for quantized weights"


def _compare(alt: Candidate | None, w: Candidate, name: str) -> str | None:
    if alt is None:
        return None
    if not alt.fits:
        need = "more than " if getattr(alt.memory, "lower_bound", False) else ""
        return (f"{name} does not fit: {need}{gib(alt.memory.peak_bytes, 1)} at best ({alt.label}, micro batch "
                f"{alt.config.per_device_train_batch_size}) > {gib(alt.limit_bytes, 1)} limit")
    if _faster(alt, w):
        return (f"{name} fits too and is {speed_phrase(alt.tokens_per_s, w.tokens_per_s)}, but "
                f"{_why_not_faster(alt, w)}")
    return f"{name} fits too but is {speed_phrase(alt.tokens_per_s, w.tokens_per_s)}"


def _flip(ev: Evaluator, space: Space, cand: Candidate, **changes: Any) -> Candidate:
    """The winner's config with one family decision changed, at micro batch 1 (memory only)."""
    fam = replace(cand.family, **changes)
    cfg = config_for(space, fam, cand.config.cutoff_len, space.micro_batches[0], ev.setup.world_size)
    return ev.candidate(fam, cfg, timed=False)


def _slower_because(a: Family, win: Family, a_cand: Candidate, w: Candidate) -> str:
    causes = []
    if a.quantization_bit and not win.quantization_bit:
        causes.append(f"dequantizes {a.quantization_bit}-bit weights every pass")
    if a.finetuning_type == "full" and win.finetuning_type != "full":
        causes.append("6N instead of 4N FLOPs per token")
    if a.gradient_checkpointing and not win.gradient_checkpointing:
        causes.append("recomputes activations")
    if a.deepspeed_stage == 3 and win.deepspeed_stage != 3:
        causes.append("ZeRO-3 gathers the weights every pass")
    if a.offload != "none" and win.offload == "none":
        causes.append(f"moves {a.offload} state over PCIe")
    if a_cand.config.per_device_train_batch_size < w.config.per_device_train_batch_size:
        causes.append(f"micro batch {a_cand.config.per_device_train_batch_size} only")
    if a_cand.config.cutoff_len < w.config.cutoff_len:
        causes.append(f"cutoff {a_cand.config.cutoff_len}")
    return "; ".join(causes)


def _lost(c: Candidate, w: Candidate) -> str:
    if not c.fits:
        if not c.host_ok:
            return "does not fit: the offloaded state exceeds the host RAM"
        need = "more than " if getattr(c.memory, "lower_bound", False) else ""
        return (f"does not fit: needs {need}{gib(c.memory.peak_bytes, 1)} at micro batch "
                f"{c.config.per_device_train_batch_size}, cutoff {c.config.cutoff_len} "
                f"> {gib(c.limit_bytes, 1)} limit")
    why = speed_phrase(c.tokens_per_s, w.tokens_per_s)
    if _faster(c, w):
        why += f", but {_why_not_faster(c, w)}"
    else:
        cause = _slower_because(c.family, w.family, c, w)
        if c.config.cutoff_len < w.config.cutoff_len and round(c.tokens_per_s) == round(w.tokens_per_s):
            cause = f"fits only cutoff {c.config.cutoff_len} (< {w.config.cutoff_len})"
        if cause:
            why += f": {cause}"
    if c.family.finetuning_type == "full" and w.family.finetuning_type != "full":
        why += "; full fine-tuning fits too (ask with --method full, lr 1e-5)"
    return why


def runners_up(winner: Candidate, seen: list[Candidate], ev: Evaluator, n: int = 3) -> list[Candidate]:
    """Up to n alternatives a person would ask about, each with why it lost."""
    best: dict[Family, Candidate] = {}
    for c in seen:
        if c.family == winner.family:
            continue
        old = best.get(c.family)
        if old is None or (c.fits, c.config.cutoff_len, c.tokens_per_s) > (old.fits, old.config.cutoff_len,
                                                                            old.tokens_per_s):
            best[c.family] = c
    pool = list(best.values())
    fitting = sorted((c for c in pool if c.fits), key=lambda c: -c.tokens_per_s)
    picks: list[Candidate] = []

    def take(c: Candidate | None) -> None:
        if c is not None and c not in picks and len(picks) < n:
            picks.append(c)

    wf = winner.family
    # 1. the fastest other method that fits (e.g. QLoRA when LoRA won)
    take(next((c for c in fitting if c.family.method != wf.method and c.family.finetuning_type == "lora"), None))
    # 2. a preferred family that did not fit: 16-bit when quantized won, no checkpointing when it is on,
    #    a lower ZeRO stage, no offload
    def preferred(f: Family) -> bool:
        return ((wf.quantization_bit and (not f.quantization_bit or f.quantization_bit > wf.quantization_bit))
                or (wf.gradient_checkpointing and not f.gradient_checkpointing and f.method == wf.method)
                or (f.deepspeed_stage < wf.deepspeed_stage and f.method == wf.method)
                or (wf.offload != "none" and f.offload == "none" and f.method == wf.method))

    failed = [c for c in pool if not c.fits and c.family.finetuning_type == "lora" and preferred(c.family)]
    failed.sort(key=lambda c: (c.family.offload != "none", c.family.deepspeed_stage, c.memory.peak_bytes))
    take(failed[0] if failed else None)
    # 3. the same method, another family (checkpointing, stage)
    take(next((c for c in fitting if c.family.method == wf.method), None))
    # 4. full fine-tuning when it is clearly affordable
    take(next((c for c in fitting if c.family.finetuning_type == "full" and wf.finetuning_type != "full"), None))
    for c in fitting:
        take(c)
    for c in sorted((c for c in pool if not c.fits), key=lambda c: c.memory.peak_bytes):
        if len(picks) >= 2:
            break
        take(c)
    return [replace(c, why=_lost(c, winner)) for c in picks]


def explain(w: Candidate, seen: list[Candidate], ev: Evaluator, space: Space, data, *, step: str,
            pinned: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(setting, value, why) for every choice of the winner."""
    c, f = w.config, w.family
    out: list[tuple[str, str, str]] = []
    limit = w.limit_bytes

    def given(key: str) -> bool:
        return key in pinned

    from planner.trainers import DEFAULT_TRAINER, recipe

    r = recipe(c.trainer)
    if given("trainer"):
        why = f"as given ({r.checked} recipe, profiles/trainers.yaml)"
    else:
        why = (f"default: the exported llamafactory.yaml is trained by it ({r.checked} recipe); "
               f"--trainer {' | '.join(n for n in ('trl', 'axolotl', 'peft') if n != DEFAULT_TRAINER)} for another")
    from planner.stack import stack_versions

    v = stack_versions(c.trainer and c.stack)
    why += (f"; stack{' (--stack)' if c.stack else ''}: transformers {v.get('transformers')}, peft {v.get('peft')}, "
            f"bitsandbytes {v.get('bitsandbytes')}")
    out.append(("trainer", r.tool, why))

    # method
    if given("finetuning_type") or given("quantization_bit"):
        why = "as given"
    elif f.quantization_bit:
        alt = _best_of(seen, lambda x: x.family.finetuning_type == "lora" and not x.family.quantization_bit)
        why = _compare(alt, w, "LoRA 16-bit") or "LoRA 16-bit was not tried"
        if alt is not None and alt.fits:
            if w.tokens_per_s >= QUANTIZED_MUST_BE_FASTER * alt.tokens_per_s:
                why += f", by more than the {QUANTIZED_MUST_BE_FASTER:g}x a quantized config must gain: " \
                       "quantizing pays off here"
        else:
            why += f"; {f.quantization_bit}-bit weights fit (QLoRA matches 16-bit LoRA, Dettmers et al. 2023)"
    else:
        why = "LoRA on 16-bit weights fits: no need to quantize"
        q = _best_of(seen, lambda x: x.family.finetuning_type == "lora" and bool(x.family.quantization_bit))
        if q is not None and q.fits and q.throughput is not None and f.finetuning_type == "lora":
            name = q.family.label.split(",")[0]
            if _faster(q, w):
                why += (f" ({name} would be {speed_phrase(q.tokens_per_s, w.tokens_per_s)}, but a quantized "
                        f"config must be {QUANTIZED_MUST_BE_FASTER:g}x as fast to be chosen: quantization "
                        "error for a small gain)")
            else:
                why += f" ({name} is {speed_phrase(q.tokens_per_s, w.tokens_per_s)} here)"
    out.append(("method", f.label.split(",")[0], why))

    # cutoff
    lo, hi = space.cutoff_band
    if given("cutoff_len"):
        why = "as given"
    elif data is None:
        why = "LLaMA-Factory's default; give --data to fit it to your lengths"
    else:
        s, t = data.truncation_at(c.cutoff_len)
        cut = f"cuts {s:.1%} of samples, {t:.2%} of tokens"
        if c.cutoff_len >= space.cutoff_target:
            why = f"p{data.percentile * 100:g} of your data (band p95 {lo} - p99 {hi}); {cut}"
        elif c.cutoff_len >= lo:
            why = f"shortened from {space.cutoff_target} to fit, still inside the p95-p99 band; {cut}"
        else:
            why = f"only {c.cutoff_len} fits (below p95 = {lo}): {cut}"
    out.append(("cutoff_len", str(c.cutoff_len), why))

    # micro batch
    if given("per_device_train_batch_size"):
        why = "as given"
    else:
        # only the sizes the search estimated (no new estimates just to explain)
        fits = [b for b in space.micro_batches
                if (cfg := config_for(space, f, c.cutoff_len, b, ev.setup.world_size)) in ev.estimated
                and ev.fits(cfg)]
        largest = max(fits) if fits else c.per_device_train_batch_size
        cap = space.micro_batches[-1]
        if c.per_device_train_batch_size < largest:
            nxt = ev.throughput(config_for(space, f, c.cutoff_len, space.micro_batches[
                space.micro_batches.index(c.per_device_train_batch_size) + 1], ev.setup.world_size))
            why = (f"fastest of those that fit (up to {largest}): random batches pad to their longest sample "
                   f"(padding efficiency {w.throughput.padding_efficiency:.0%} here, "
                   f"{nxt.padding_efficiency:.0%} one size up; --group-by-length or --packing reduce it)")
        elif largest == cap and cap * ev.setup.world_size >= space.target_batch:
            why = f"fills the target batch of {space.target_batch} without accumulation"
        else:
            why = "the largest that fits under the limit"
    out.append(("per_device_train_batch_size", str(c.per_device_train_batch_size), why))
    eff = c.per_device_train_batch_size * c.gradient_accumulation_steps * ev.setup.world_size
    out.append(("gradient_accumulation_steps", str(c.gradient_accumulation_steps),
                "as given" if given("gradient_accumulation_steps") else
                f"effective batch {eff} = {c.per_device_train_batch_size} x {c.gradient_accumulation_steps}"
                f" x {ev.setup.world_size} {'process' if ev.setup.gpu.is_cpu else 'GPU(s)'}; target "
                f"{space.target_batch} ({space.target_source})"))

    # DeepSpeed
    if given("deepspeed_stage") or given("offload"):
        why = "as given"
    elif f.deepspeed_stage == 0:
        why = ("the CPU: one process, no DeepSpeed needed" if ev.setup.gpu.is_cpu else
               "one GPU: no DeepSpeed needed" if ev.setup.world_size == 1 else
               "plain data parallel (DDP): the model fits on each GPU and the lowest stage is the fastest")
    else:
        alt = _best_of(seen, lambda x: x.family.method == f.method and x.family.deepspeed_stage < f.deepspeed_stage
                       and x.family.offload == "none")
        why = "needed" if alt is None or not alt.fits else "the fastest option"
        if alt is not None:
            plain = "without ZeRO, one GPU" if ev.setup.world_size == 1 else "without ZeRO (plain DDP)"
            why += ": " + (_compare(alt, w, f"ZeRO-{alt.family.deepspeed_stage}" if alt.family.deepspeed_stage
                                    else plain) or "")
        if f.offload != "none":
            why += f"; {f.offload} offload to host RAM because nothing fits on the GPUs alone (slow)"
    stage = "none" if not f.deepspeed_stage else f"ZeRO-{f.deepspeed_stage}" + (
        f" + offload {f.offload}" if f.offload != "none" else "")
    out.append(("deepspeed", stage, why))

    # gradient checkpointing
    if given("gradient_checkpointing"):
        why = "as given"
    elif f.gradient_checkpointing:
        off = _flip(ev, space, w, gradient_checkpointing=False)
        why = (f"without it the peak is {gib(off.memory.peak_bytes, 1)} > {gib(limit, 1)}" if not off.fits else
               "on: it lets a larger micro batch fit, which is faster overall")
    else:
        why = "off: everything fits without it, saving the recomputed forward (~25% of the compute)"
    out.append(("gradient_checkpointing", "on" if f.gradient_checkpointing else "off", why))
    out.append(("enable_liger_kernel", "on" if c.use_liger_kernel else "off", space.liger_why))
    out.append(("optim", c.optim, "as given" if given("optim") else
                "8-bit AdamW states (bitsandbytes): 2 B instead of 8 B per trainable parameter"
                if c.optim in EIGHT_BIT_OPTIMIZERS else "fused AdamW: one kernel per step, no foreach temporaries"))
    out.append(("margin", f"{ev.margin:.0%}", f"peak {gib(w.memory.peak_bytes, 1)} <= {gib(limit, 1)} "
                f"= budget {gib(w.memory.budget_bytes, 1)} x (1 - {ev.margin:g})"))
    return out
