"""The auto-configurator: the fastest config whose predicted peak stays under the budget.

Order of preference (each step only when the previous finds nothing that fits):
  1. the data's cutoff (or the pinned one), no offload: the fastest family and micro batch;
  2. a shorter cutoff still inside the data's p95-p99 band, no offload;
  3. ZeRO offload to host RAM, at the target cutoff, then inside the band;
  4. below the band: the longest cutoff that fits (the plan says what it cuts).
Inside a family the peak grows with the micro batch and the cutoff, so both are binary-searched
(a family costs ~log2(ladder) memory estimates); the speed of every fitting micro batch is compared
because padding and per-step costs make throughput non-monotone in the batch.

    >>> plan = search(spec, setup, data, pinned={}, target_batch=None, margin=0.05, epochs=None)
    >>> plan.config.method, plan.throughput.tokens_per_s
"""

from __future__ import annotations

from typing import Any

from planner.errors import UserError
from planner.hardware.gpu_spec import GpuSetup
from planner.model.spec import ModelSpec
from planner.search.hparams import choose_hparams, epochs_for, lora_shape, val_size_for
from planner.search.infeasible import raise_infeasible
from planner.search.lengths import profile_of
from planner.search.objective import DEFAULT_MARGIN, Candidate, Estimator, Evaluator, score, score_of
from planner.search.plan import Plan
from planner.search.reasons import explain, runners_up
from planner.search.space import CUTOFF_STEP, Family, Space, build_space, config_for
from planner.search.throughput import DEFAULT_EFFICIENCY, Efficiency


def _largest(lo_ok: int, hi: int, ok) -> int:
    """Largest i in [lo_ok, hi] with ok(i), given ok(lo_ok) and monotone ok (True then False)."""
    lo = lo_ok
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def best_in_family(ev: Evaluator, space: Space, fam: Family, cutoff: int) -> Candidate:
    """The fastest micro batch of `fam` at `cutoff`; a non-fitting candidate (micro batch 1) if none fits."""
    world = ev.setup.world_size
    ladder = space.micro_batches
    first = config_for(space, fam, cutoff, ladder[0], world)
    if not ev.fits(first):
        return ev.candidate(fam, first)
    top = _largest(0, len(ladder) - 1, lambda i: ev.fits(config_for(space, fam, cutoff, ladder[i], world)))
    sizes = list(range(top + 1))
    # Without accumulation (the largest rung fills the target batch) no gradients stay resident between
    # micro batches, so the peak can drop there: that rung is checked on its own (LoRA's adapter
    # gradients are too small to matter).
    last = len(ladder) - 1
    if top < last and fam.finetuning_type != "lora" \
            and config_for(space, fam, cutoff, ladder[last], world).gradient_accumulation_steps == 1 \
            and ev.fits(config_for(space, fam, cutoff, ladder[last], world)):
        sizes.append(last)
    best = None
    for i in sizes:
        cand = ev.candidate(fam, config_for(space, fam, cutoff, ladder[i], world))
        if best is None or cand.tokens_per_s > best.tokens_per_s:
            best = cand
    return best


def max_cutoff(ev: Evaluator, space: Space, fam: Family, hi: int, lo: int) -> int | None:
    """Longest cutoff in [lo, hi] (multiples of 64) at which `fam` fits with the smallest micro batch."""
    world, b = ev.setup.world_size, space.micro_batches[0]
    steps_lo, steps_hi = -(-lo // CUTOFF_STEP), hi // CUTOFF_STEP
    if steps_lo > steps_hi or not ev.fits(config_for(space, fam, steps_lo * CUTOFF_STEP, b, world)):
        return None
    k = _largest(steps_lo, steps_hi, lambda k: ev.fits(config_for(space, fam, k * CUTOFF_STEP, b, world)))
    return k * CUTOFF_STEP


def _pick(cands: list[Candidate]) -> Candidate | None:
    fitting = [c for c in cands if c.fits]
    return max(fitting, key=lambda c: (c.config.cutoff_len, score(c))) if fitting else None


def _fastest(cands: list[Candidate]) -> Candidate | None:
    fitting = [c for c in cands if c.fits]
    return max(fitting, key=score) if fitting else None


def bound(ev: Evaluator, space: Space, fam: Family, cutoff: int) -> float:
    """Upper bound on the score `fam` can reach at `cutoff`: its best micro batch with memory ignored.
    Speed costs no memory estimate, so families that cannot beat the best so far are never estimated."""
    world = ev.setup.world_size
    return max(score_of(ev.throughput(config_for(space, fam, cutoff, b, world)), fam.quantization_bit)
               for b in space.micro_batches)


def _branch_and_bound(ev: Evaluator, space: Space, fams: list[Family], cutoff: int
                      ) -> tuple[Candidate | None, list[Candidate]]:
    """The best family at `cutoff`, estimating families in order of their bound until none can win."""
    ranked = sorted(((bound(ev, space, f, cutoff), i, f) for i, f in enumerate(fams)), reverse=True)
    best, seen = None, []
    for b, _, f in ranked:
        if best is not None and score(best) >= b:
            break
        cand = best_in_family(ev, space, f, cutoff)
        seen.append(cand)
        if cand.fits and (best is None or score(cand) > score(best)):
            best = cand
    return best, seen


def _choose(ev: Evaluator, space: Space, primary: list[Family]) -> tuple[Candidate | None, list[Candidate], str]:
    """Run the preference steps; returns (winner, every candidate evaluated, which step won)."""
    seen: list[Candidate] = []
    target = space.cutoff_target
    band_lo = space.cutoff_band[0]
    on_gpu = [f for f in primary if f.offload == "none"]
    offloaded = [f for f in primary if f.offload != "none"]
    for fams, step in ((on_gpu, "target"), (offloaded, "offload")):
        win, at_target = _branch_and_bound(ev, space, fams, target)
        seen += at_target
        if win is not None:
            return win, seen, step
        if space.cutoff_pinned:
            continue
        # A shorter cutoff inside the band: each family at its own longest fitting cutoff.
        in_band = []
        for f in fams:
            c = max_cutoff(ev, space, f, target - CUTOFF_STEP, band_lo)
            if c is not None:
                in_band.append(best_in_family(ev, space, f, c))
        seen += in_band
        win = _fastest(in_band)
        if win is not None:
            return win, seen, "band" if step == "target" else "offload-band"
    if space.cutoff_pinned:
        return None, seen, "none"
    below = []
    for f in primary:
        c = max_cutoff(ev, space, f, min(target, band_lo) - CUTOFF_STEP, space.cutoff_floor)
        if c is not None:
            below.append(best_in_family(ev, space, f, c))
    seen += below
    return _pick(below), seen, "below-band"


def _alternatives(ev: Evaluator, space: Space, winner: Candidate, primary: list[Family], extra: list[Family],
                  seen: list[Candidate]) -> list[Candidate]:
    """A few more candidates for the runners-up and the reasons: the other precision (16-bit when a
    quantized config won, 4-bit otherwise), checkpointing flipped, and full fine-tuning when clearly
    affordable (its model states alone leave room under the limit)."""
    done = {c.family for c in seen}
    cutoff, wf = winner.config.cutoff_len, winner.family
    out: list[Candidate] = []

    def first(pred) -> Family | None:
        fams = [f for f in primary if f not in done and pred(f)]
        return max(fams, key=lambda f: bound(ev, space, f, cutoff), default=None)

    def other_precision(f: Family) -> bool:
        return (not f.quantization_bit) if wf.quantization_bit else f.quantization_bit == 4

    # the other precision, as close to the winner as possible (same checkpointing first, then on)
    for gc in dict.fromkeys((wf.gradient_checkpointing, True)):
        f = first(lambda f, gc=gc: other_precision(f) and f.gradient_checkpointing == gc and f.offload == "none")
        if f is not None:
            done.add(f)
            out.append(best_in_family(ev, space, f, cutoff))
            if out[-1].fits:
                break
    picks = [first(lambda f: f.method == wf.method and f.deepspeed_stage == wf.deepspeed_stage
                   and f.offload == wf.offload and f.gradient_checkpointing != wf.gradient_checkpointing)]
    if extra and _full_affordable(ev, winner):
        picks.append(next((f for f in extra if f.offload == "none" and f.gradient_checkpointing
                           and f.optim == "adamw_torch_fused" and f not in done), None))
    for f in picks:
        if f is not None and f not in done:
            done.add(f)
            out.append(best_in_family(ev, space, f, cutoff))
    return out


def _full_affordable(ev: Evaluator, winner: Candidate) -> bool:
    """Mixed-precision full fine-tuning keeps 16 B per parameter of model states (DeepSpeed ZeRO paper,
    Sec. 3.1); ZeRO-2 leaves the 16-bit weights (2 B) whole and partitions the other 14 B."""
    from planner.model.params import count_params

    p = count_params(ev.spec).total
    n = ev.setup.world_size
    states = min(16 * p, 2 * p + 14 * p / n) if n > 1 else 16 * p
    return states < 0.8 * winner.limit_bytes


def search(model: ModelSpec, setup: GpuSetup, data, *, pinned: dict[str, Any] | None = None,
           target_batch: int | None = None, margin: float | None = None, epochs: float | None = None,
           packing: bool = False, group_by_length: bool = False, estimator: Estimator | None = None,
           efficiency: Efficiency = DEFAULT_EFFICIENCY, _explain: bool = True) -> Plan:
    """The recommended Plan for `model` on `setup` with `data` (a DataStats or None).

    `pinned` holds the TrainConfig fields the user set; they are never changed. Raises
    planner.errors.Infeasible (with the smallest change that fits) when nothing fits.
    """
    pinned = dict(pinned or {})
    margin = DEFAULT_MARGIN if margin is None else float(margin)
    if not 0.0 <= margin < 0.5:
        raise UserError(f"--margin {margin}: expected a fraction between 0 and 0.5 (e.g. 0.05 = 5%).")
    defaults, lora_why = lora_shape(data, pinned)  # the LoRA rank and alpha, chosen here once
    space = build_space(model, setup, data, pinned={**defaults, **pinned}, target_batch=target_batch,
                        packing=packing, group_by_length=group_by_length)
    n_epochs, _ = epochs_for(data, epochs)
    val, _ = val_size_for(data)
    ev = Evaluator(model, setup, space, margin=margin, lengths=profile_of(data), estimator=estimator,
                   epochs=n_epochs, train_share=1.0 - val, efficiency=efficiency)
    asked = pinned.get("finetuning_type")
    primary = [f for f in space.families if asked is not None or f.finetuning_type == "lora"]
    extra = [f for f in space.families if f not in primary]
    winner, seen, step = _choose(ev, space, primary)
    if winner is None:
        raise_infeasible(model, setup, data, ev, space, seen, pinned=pinned, search=search, explain=_explain)
    seen += _alternatives(ev, space, winner, primary, extra, seen)
    others = runners_up(winner, seen, ev)
    tp = winner.throughput
    eff_batch = winner.config.per_device_train_batch_size * winner.config.gradient_accumulation_steps * setup.world_size
    hp = choose_hparams(model, winner.config, data, setup=setup, effective_batch=eff_batch, epochs=epochs,
                        steps_per_epoch=tp.steps_per_epoch if tp else None, given=frozenset(pinned),
                        lora_why=lora_why)
    reasons = explain(winner, seen, ev, space, data, step=step, pinned=pinned)
    return Plan(model=model, setup=setup, config=winner.config, memory=winner.memory, throughput=tp, hparams=hp,
                runners_up=others, reasons=reasons, margin=margin, limit_bytes=winner.limit_bytes,
                target_batch=space.target_batch, target_source=space.target_source, packing=packing,
                group_by_length=group_by_length, cutoff_band=space.cutoff_band, cutoff_target=space.cutoff_target,
                truncation=data.truncation_at(winner.config.cutoff_len) if data is not None else None,
                memory_calls=ev.memory_calls, pinned=tuple(sorted(pinned)))
