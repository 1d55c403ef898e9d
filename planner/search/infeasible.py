"""When nothing fits: say how close the best attempt came and the smallest changes that would fit.

Each suggestion is checked by re-running the search with one thing changed (4-bit weights, ZeRO-3 with
offload, a shorter cutoff, more GPUs, a bigger card), so every line the user reads is a plan that fits.

    Infeasible: Qwen2.5-72B full fine-tuning does not fit on 1 x RTX-4090 (limit 21.7 GiB) ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from planner.errors import Infeasible
from planner.hardware.gpu_spec import GpuSetup
from planner.model.spec import ModelSpec
from planner.units import gib

MORE_GPUS = ((2, 1), (4, 1), (8, 1), (8, 2), (8, 4), (8, 8))


def _hw(setup: GpuSetup) -> str:
    return f"{setup.count} x {setup.gpu.name}" + (f" x {setup.nodes} nodes" if setup.nodes > 1 else "")


def _try(search: Callable[..., Any], model: ModelSpec, setup: GpuSetup, data, pinned: dict[str, Any], ev) -> Any:
    """A plan with these inputs, or None (no suggestions computed: no recursion). `search` is
    planner.search.search, handed in by it (this module is its helper, not its caller)."""
    try:
        return search(model, setup, data, pinned=pinned, target_batch=None, margin=ev.margin, epochs=ev.epochs,
                      packing=ev.space.packing, group_by_length=ev.space.group_by_length, estimator=ev.estimate,
                      efficiency=ev.efficiency, _explain=False)
    except Infeasible:
        return None


def _host_for(setup: GpuSetup) -> dict[str, Any]:
    """Host RAM of a suggested bigger setup: --host-mem (per node) stays; this machine's RAM does not
    describe another machine, so the card-class default applies there (planner.hardware.host_memory)."""
    if setup.host_ram_source.startswith("--host-mem"):
        return {}
    return {"host_ram_bytes": None, "host_ram_source": ""}


def _summary(plan) -> str:
    c = plan.config
    stage = f", ZeRO-{c.deepspeed_stage}" if c.deepspeed_stage else ""
    off = f" + {c.offload} offload" if c.offload != "none" else ""
    method = dict((k, v) for k, v, _ in plan.reasons).get("method", c.method)
    return (f"{method}{stage}{off}, cutoff {c.cutoff_len}, micro batch "
            f"{c.per_device_train_batch_size}: peak {gib(plan.memory.peak_bytes, 1)} of {gib(plan.limit_bytes, 1)}")


def _unpin_groups(pinned: dict[str, Any]) -> list[tuple[str, tuple[str, ...]]]:
    """(the flag as the user wrote it, the pinned fields it set) for every flag but --cutoff (its own line)."""
    from planner.request import TRAIN_FLAGS

    groups = []
    for f in TRAIN_FLAGS:
        flag, keys, shown = f.param, f.fields, f.spelling
        if flag in ("cutoff", "offload") or (flag == "quant" and "finetuning_type" in pinned):
            continue  # --quant goes with --method, --offload with --zero
        if flag == "zero":
            keys, shown = ("deepspeed_stage", "offload"), "--zero/--offload"
        if flag == "method" and "finetuning_type" not in pinned:
            continue
        if any(k in pinned for k in keys):
            groups.append((shown, keys))
    return groups


def suggestions(search: Callable[..., Any], model: ModelSpec, setup: GpuSetup, data, ev,
                pinned: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(change: str, flags: str, plan) -> None:
        if plan is not None:
            item = {"change": change, "flags": flags, "plan": _summary(plan),
                    "peak_bytes": int(plan.memory.peak_bytes), "config": plan.to_json()["config"]}
            if plan.truncation is not None and plan.config.cutoff_len < ev.space.cutoff_target:
                item["truncated_samples_share"], item["truncated_tokens_share"] = plan.truncation
            out.append(item)

    base = {k: v for k, v in pinned.items() if k not in ("deepspeed_stage", "offload")}
    # 0. a pinned flag the planner would set otherwise (--batch-size 100000, --lora-rank 65536): unpin it
    groups = _unpin_groups(pinned)
    for shown, keys in groups:
        add(f"let the planner choose instead of {shown}", f"drop {shown}",
            _try(search, model, setup, data, {k: v for k, v in pinned.items() if k not in keys}, ev))
    if len(groups) > 1 and not out:  # no one flag is to blame: all of them together
        every = {k for _, keys in groups for k in keys}
        shown = " ".join(s for s, _ in groups)
        add(f"let the planner choose instead of {shown}", f"drop {shown}",
            _try(search, model, setup, data, {k: v for k, v in pinned.items() if k not in every}, ev))
    # 1. 4-bit weights (QLoRA) on the same hardware
    if pinned.get("quantization_bit") != 4:
        q = {k: v for k, v in base.items() if k not in ("finetuning_type", "dtype", "amp")}
        add("4-bit weights (QLoRA)", "--method qlora",
            _try(search, model, setup, data, {**q, "finetuning_type": "lora", "quantization_bit": 4}, ev))
    # 2. ZeRO-3 with offload to host RAM on the same hardware
    if pinned.get("quantization_bit") is None:
        for offload in ("optimizer", "params"):
            plan = _try(search, model, setup, data, {**base, "deepspeed_stage": 3, "offload": offload}, ev)
            if plan is not None:
                add(f"ZeRO-3 with {offload} offload to host RAM (slow)",
                    f"--zero 3 --offload {offload}", plan)
                break
    # 3. a shorter cutoff (the search already tried down to its floor; say what the floor cuts)
    if "cutoff_len" in pinned:
        plan = _try(search, model, setup, data, {k: v for k, v in pinned.items() if k != "cutoff_len"}, ev)
        if plan is not None:
            add(f"a shorter cutoff_len ({plan.config.cutoff_len})", f"--cutoff {plan.config.cutoff_len}", plan)
    # 4. more GPUs of the same card: the fewest that fit, and the fewest that fit without offload
    offloaded = False
    for count, nodes in MORE_GPUS:
        if count * nodes <= setup.world_size:
            continue
        bigger = replace(setup, count=count, nodes=nodes, detected=False, **_host_for(setup))
        plan = _try(search, model, bigger, data, base, ev)
        if plan is None or (offloaded and plan.config.offload != "none"):
            continue
        add(f"more GPUs: {_hw(bigger)}", f"--gpus {count}" + (f" --nodes {nodes}" if nodes > 1 else ""), plan)
        if plan.config.offload == "none":
            break
        offloaded = True
    # 5. a card with more memory
    from planner.hardware.catalog import load_gpus

    cards = sorted((e.spec for e in load_gpus() if e.spec.memory_bytes > setup.gpu.memory_bytes
                    and e.spec.vendor == setup.gpu.vendor), key=lambda g: (g.memory_bytes, -g.bf16_tflops))
    for card in cards:
        plan = _try(search, model, replace(setup, gpu=card, detected=False, free_bytes=None, **_host_for(setup)),
                    data, base, ev)
        if plan is not None:
            add(f"a card with more memory: {setup.count} x {card.name}", f"--gpu {card.name}", plan)
            break
    return out


def raise_infeasible(model: ModelSpec, setup: GpuSetup, data, ev, space, seen: list, *,
                     pinned: dict[str, Any], search: Callable[..., Any], explain: bool = True) -> None:
    limit = int(ev.limit(seen[0].memory)) if seen else 0
    asked = ", ".join(f"{k}={v}" for k, v in sorted(pinned.items()) if v is not None) or "no settings pinned"
    closest = min(seen, key=lambda c: (not c.host_ok, c.memory.peak_bytes / max(1, c.limit_bytes))) if seen else None
    lines = [f"Nothing fits: {model.name} on {_hw(setup)} ({gib(setup.gpu.memory_bytes, 1)} each, limit "
             f"{gib(limit, 1)} with a {ev.margin:.0%} margin; {asked})."]
    payload: dict[str, Any] = {"model": model.name, "gpu": setup.gpu.name, "count": setup.count,
                               "nodes": setup.nodes, "limit_bytes": limit, "margin": ev.margin,
                               "pinned": dict(pinned)}
    if closest is not None:
        c = closest.config
        host = "" if closest.host_ok else " and more host RAM than the machine has"
        need = "more than " if getattr(closest.memory, "lower_bound", False) else ""
        lines.append(f"Closest: {closest.label}, cutoff {c.cutoff_len}, micro batch "
                     f"{c.per_device_train_batch_size} needs {need}{gib(closest.memory.peak_bytes, 1)}{host}.")
        payload["closest"] = closest.to_json()
    host_bound = [c for c in seen if not c.host_ok and c.memory.peak_bytes <= c.limit_bytes]
    if host_bound:
        from planner.hardware.host_memory import host_need_bytes, host_ram_for

        h = min(host_bound, key=lambda c: c.memory.host_bytes)
        need = host_need_bytes(setup, h.memory.host_bytes)
        ram, source = host_ram_for(setup)
        lines.append(f"{h.label} would fit the GPU ({gib(h.memory.peak_bytes, 1)}) but needs {gib(need, 1)} of host "
                     f"RAM per node ({gib(h.memory.host_bytes, 1)} pinned by the offload); {gib(ev.host_limit_bytes(), 1)} "
                     f"of {gib(ram, 1)} is usable ({source}; give the real figure with --host-mem).")
        payload["host_bytes_needed"] = int(need)
        payload["host_bytes_available"] = ev.host_limit_bytes()
        payload["host_ram_source"] = source
    sugg = suggestions(search, model, setup, data, ev, pinned) if explain else []
    payload["suggestions"] = sugg
    if sugg:
        lines.append("Smallest changes that fit (each checked):")
        for s in sugg:
            cut = ""
            if "truncated_samples_share" in s and s["truncated_samples_share"]:
                cut = (f" (cuts {s['truncated_samples_share']:.1%} of samples, "
                       f"{s['truncated_tokens_share']:.1%} of tokens)")
            lines.append(f"  - {s['change']}: {s['flags']} -> {s['plan']}{cut}")
    elif explain:
        lines.append("No single change fits: try a smaller model of the same family.")
    raise Infeasible("\n".join(lines), payload)
