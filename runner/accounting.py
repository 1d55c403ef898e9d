"""Oracle 1, tensor accounting: live tensor storage bytes of a real training step, by category.

A TorchDispatchMode sees every aten op of forward, backward (autograd runs its ops through the same
mode) and the optimizer. Each untyped storage is counted once, from the op that creates it until a
weakref finalizer reports it dead, so views and in-place ops never double count. The live total is
read after every op; each phase keeps its running maximum and the category breakdown at that tick.

What it cannot see: memory a kernel allocates and frees inside one op (workspaces), allocator
rounding (CUDA: 512 B blocks, 2 MiB segments) and fragmentation, and everything outside the
allocator (CUDA context, cuBLAS workspaces). Those are the device-specific part that GPU
calibration fits.

CPU oracle vs a CUDA device (checked on torch 2.13, transformers 5.23, peft 0.21):
- sdpa on CPU runs aten._scaled_dot_product_flash_attention_for_cpu (fake tensors take the same
  path; StepMemory.attention_ops says which ran). It saves q, k and v (k/v not repeated: GQA is
  native, transformers passes enable_gqa without a mask), the output and a (b, heads, s) fp32
  logsumexp: the same set as CUDA FlashAttention-2 (plus its two rng scalars). CUDA's
  memory-efficient kernel pads logsumexp to a multiple of 32 tokens; cuDNN keeps (b, heads, s, 1)
  fp32. With a padding mask transformers repeats k/v instead (and CUDA picks memory-efficient);
  the math fallback (and eager) keeps (b, heads, s, s) probabilities. The oracles use unpadded rows.
- AdamW's float32 `step` scalar per parameter tensor is counted here; on CUDA it stays on the host
  unless the optimizer is fused or capturable (torch/optim/adam.py). 4 B per tensor.
- Autocast caches the low-precision copy of each weight for the autocast region on CPU as on CUDA;
  the two autocast fp32 op lists differ for a few elementwise ops.
- clip_grad_norm_ runs per tensor on CPU and foreach on CUDA: scalars either way.

    >>> mem = measure_step(spec, TrainConfig(finetuning_type="lora"), batch_size=1, seq_len=256)
    >>> mem.phases["backward"], mem.categories_at_peak["activations"]
"""

from __future__ import annotations

import time
import weakref
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig

if TYPE_CHECKING:
    import torch

CATEGORIES = (
    "weights",  # frozen parameters and buffers
    "trainable",  # parameters with requires_grad
    "inputs",  # the batch (input_ids, labels, mask)
    "gradients",  # .grad of the parameters
    "optimizer_state",  # tensors in optimizer.state (AdamW: exp_avg, exp_avg_sq, a float32 `step` each)
    "activations",  # created during forward and still alive when forward returns
    "recomputed",  # re-created in backward by activation checkpointing (ops run with grad enabled)
    "temporaries",  # everything else: freed within its phase, or created by backward/optimizer
    "other",  # tensors that existed before tracking but were not registered (should stay 0)
)
PHASE_ORDER = ("load", "forward", "backward", "optimizer")


class _Rec:
    """One storage's life: bytes, the ticks it was born and died at, and what it is."""

    __slots__ = ("nbytes", "born", "died", "phase", "category")

    def __init__(self, nbytes: int, born: int, phase: str, category: str | None):
        self.nbytes, self.born, self.died = nbytes, born, None
        self.phase, self.category = phase, category


def _tensors(obj: Any):
    """Tensors in an op's args/outputs (flat, lists/tuples/dicts one level deep is all aten uses)."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            if isinstance(o, torch.Tensor):
                yield o
            elif isinstance(o, (list, tuple)):
                yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _storages(t: torch.Tensor):
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(t):  # e.g. DTensor: count the inner tensors
        attrs, _ = t.__tensor_flatten__()
        for a in attrs:
            yield from _storages(getattr(t, a))
    else:
        yield t.untyped_storage()


def make_tracker(model, optimizer, *, checkpointing: bool = False):
    """A StorageTracker (TorchDispatchMode subclass) for one model and optimizer.

    checkpointing: label what backward re-creates with grad enabled as "recomputed".

    Built in a function so that importing this module does not import torch.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    metadata_ops = {torch.ops.prim.device.default}

    class StorageTracker(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.model, self.optimizer = model, optimizer
            self.records: list[_Rec] = []
            self.live: dict[int, tuple[_Rec, weakref.ref]] = {}
            self.live_bytes = 0
            self.tick = 0
            self.phase, self.step, self.phase_start = "load", 0, 0
            self.peaks: dict[tuple[int, str], tuple[int, int]] = {}  # (step, phase) -> (bytes, tick)
            self.attention_ops: Counter = Counter()
            self.checkpointing = checkpointing
            self.saved: dict[int, int] = {}  # step -> max bytes alive at forward end (activations)

        # -- storages ----------------------------------------------------------------------------
        def track(self, t: torch.Tensor, category: str | None = None) -> _Rec | None:
            rec = None
            for st in _storages(t):
                key = id(st)
                if key in self.live:
                    rec = self.live[key][0]
                    # a .grad or optimizer state outranks what the storage was first seen as
                    if (category and rec.category is None) or category in ("gradients", "optimizer_state"):
                        rec.category = category
                    if st.nbytes() != rec.nbytes:  # resized in place (out= kernels)
                        self.live_bytes += st.nbytes() - rec.nbytes
                        rec.nbytes = st.nbytes()
                    continue
                rec = _Rec(st.nbytes(), self.tick, self.phase, category)
                if category is None and self.checkpointing and self.phase == "backward" and _grad_enabled():
                    rec.category = "recomputed"
                self.records.append(rec)
                self.live[key] = (rec, weakref.ref(st, lambda _, key=key: self._died(key)))
                self.live_bytes += rec.nbytes
            return rec

        def _died(self, key: int) -> None:
            rec, _ = self.live.pop(key)
            rec.died = self.tick
            self.live_bytes -= rec.nbytes

        def _note_peak(self) -> None:
            slot = (self.step, self.phase)
            best = self.peaks.get(slot)
            if best is None or self.live_bytes > best[0]:
                self.peaks[slot] = (self.live_bytes, self.tick)
            self.tick += 1

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in metadata_ops:  # fake tensors answer .device through dispatch: no storage
                return func(*args, **kwargs)
            for t in _tensors(args):
                if id(t.untyped_storage()) not in self.live:
                    self.track(t, "other")
            out = func(*args, **kwargs)
            name = func.__name__
            if "attention" in name or "softmax" in name:
                self.attention_ops[str(func.overloadpacket.__name__)] += 1
            for t in _tensors(out):
                self.track(t)
            self._note_peak()
            return out

        # -- phases ------------------------------------------------------------------------------
        def mark(self, phase: str) -> None:
            """Called by runner.step.train_step before each phase (and "end" after the step)."""
            if self.phase == "forward":  # what forward created and still holds: activations
                saved = 0
                for rec, _ in self.live.values():
                    if rec.category is None and rec.born >= self.phase_start:
                        rec.category = "activations"
                        saved += rec.nbytes
                self.saved[self.step] = max(saved, self.saved.get(self.step, 0))
            if phase == "optimizer":
                for p in self.model.parameters():
                    if p.grad is not None:
                        self.track(p.grad, "gradients")
            if phase == "end":
                for state in self.optimizer.state.values():
                    for t in _tensors(state):
                        self.track(t, "optimizer_state")
            if phase == "forward" and self.phase in ("load", "warm", "end"):
                self.step += 1
            self.phase, self.phase_start = ("end" if phase == "end" else phase), self.tick
            if phase != "end":
                self._note_peak()

        def register_model(self, batch: dict) -> None:
            """Count what exists before the step: the model, the batch ("load" phase)."""
            for p in self.model.parameters():
                self.track(p, "trainable" if p.requires_grad else "weights")
            for b in self.model.buffers():
                self.track(b, "weights")
            for t in quant_state_tensors(self.model):
                self.track(t, "weights")
            for t in batch.values():
                self.track(t, "inputs")
            self._note_peak()

        def register_warm_state(self) -> None:
            """Count optimizer states and accumulated gradients made before tracking (warm start)."""
            self.phase = "warm"
            for p in self.model.parameters():
                if p.grad is not None:
                    self.track(p.grad, "gradients")
            for state in self.optimizer.state.values():
                for t in _tensors(state):
                    self.track(t, "optimizer_state")
            self._note_peak()

        # -- results -----------------------------------------------------------------------------
        def categories_at(self, tick: int) -> dict[str, int]:
            out = dict.fromkeys(CATEGORIES, 0)
            for r in self.records:
                if r.born <= tick and (r.died is None or r.died > tick):
                    out[r.category or "temporaries"] += r.nbytes
            return out

    return StorageTracker()


def quant_state_tensors(model):
    """The tensors of bitsandbytes 4-bit weights' QuantState (absmax, code, offset and the nested state2 of
    double quantization): part of the weights, held outside parameters and buffers."""
    import torch

    seen = set()
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        while qs is not None:
            for name in ("absmax", "code", "offset"):
                t = getattr(qs, name, None)
                if isinstance(t, torch.Tensor) and id(t) not in seen:
                    seen.add(id(t))
                    yield t
            qs = getattr(qs, "state2", None)


def _grad_enabled() -> bool:
    import torch

    return torch.is_grad_enabled()


@dataclass(frozen=True)
class StepMemory:
    """Peak live tensor bytes of training steps, per phase and category (CPU oracle result)."""

    peak_tensor_bytes: int
    peak_phase: str  # phase holding the global peak
    activation_bytes: int  # created by forward and alive when it returns (saved for backward), max over micro-batches
    phases: dict[str, int]  # load/forward/backward/optimizer -> peak live bytes (max over steps)
    categories_at_peak: dict[str, int]
    phase_categories: dict[str, dict[str, int]]  # breakdown at each phase's peak
    steps: list[dict]  # per step: {"step", "activation_bytes", "phases", "phase_categories"}
    seconds: float
    stack: dict  # versions of the measured stack
    config: dict = field(default_factory=dict)  # what was measured (model, method, shape, mode)
    attention_ops: dict[str, int] = field(default_factory=dict)  # attention/softmax aten ops seen
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


def stack_versions() -> dict:
    import platform

    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version()}


def run_tracked(model, train: TrainConfig, batch: dict, *, steps: int, warm_start: bool, mode: str,
                started: float, config: dict, notes: list[str]) -> StepMemory:
    """Run `steps` optimizer steps of `model` on `batch` under a tracker; the StepMemory.

    Each step runs micro_batches(train) micro-batches (the same batch again: a data loader holds one).
    warm_start=False measures from a fresh model: step 1 creates the optimizer states, step 2 runs
    with them. warm_start=True first runs one untracked optimizer step on zero gradients (and, when
    accumulating, leaves zero gradients in place), then traces one micro-batch and the optimizer:
    the steady state of step >= 2, micro-batch >= 2, which dominates every earlier step and
    micro-batch at every tick (tests/runner/test_simulate.py checks it is the same peak), at a
    quarter of the cost. Shared by measure_step (real CPU tensors) and runner.simulate (fake
    tensors); the caller builds the model and the batch, in FakeTensorMode when simulating.
    """
    from runner.step import make_optimizer, train_step

    optimizer, note = make_optimizer(model, train)
    if note:
        notes.append(note)
    micro = micro_batches(train)
    tracker = make_tracker(model, optimizer, checkpointing=train.gradient_checkpointing)
    tracker.register_model(batch)
    if warm_start:
        _warm_start(model, optimizer, accumulate=micro > 1)
        tracker.register_warm_state()
        micro = 1
    with tracker:
        for _ in range(steps):
            train_step(model, optimizer, [batch] * micro, train, mark=tracker.mark)
    return _result(tracker, steps, time.perf_counter() - started,
                   {**config, "mode": mode, "steps": steps, "micro_batches": micro, "warm_start": warm_start},
                   notes)


def _warm_start(model, optimizer, *, accumulate: bool) -> None:
    import torch

    params = [p for group in optimizer.param_groups for p in group["params"]]
    with torch.no_grad():
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()  # creates the states exactly as the first real step does
        optimizer.zero_grad(set_to_none=True)
        if accumulate:  # gradients of the earlier micro-batches, accumulated in place
            for p in params:
                p.grad = torch.zeros_like(p)


def _result(tracker, steps: int, seconds: float, config: dict, notes: list[str]) -> StepMemory:
    per_step, phases, phase_cats = [], {}, {}
    load_bytes, load_tick = tracker.peaks[(0, "load")]
    phases["load"], phase_cats["load"] = load_bytes, tracker.categories_at(load_tick)
    best_tick, best = load_tick, ("load", load_bytes)
    for s in range(1, steps + 1):
        row = {"step": s, "activation_bytes": tracker.saved.get(s, 0), "phases": {}, "phase_categories": {}}
        for ph in PHASE_ORDER[1:]:
            nbytes, tick = tracker.peaks[(s, ph)]
            cats = tracker.categories_at(tick)
            row["phases"][ph], row["phase_categories"][ph] = nbytes, cats
            if nbytes > phases.get(ph, -1):
                phases[ph], phase_cats[ph] = nbytes, cats
            if nbytes > best[1]:
                best, best_tick = (ph, nbytes), tick
        per_step.append(row)
    return StepMemory(
        peak_tensor_bytes=best[1], peak_phase=best[0], activation_bytes=max(tracker.saved.values(), default=0),
        phases=phases,
        categories_at_peak=tracker.categories_at(best_tick), phase_categories=phase_cats, steps=per_step,
        seconds=round(seconds, 3), stack=stack_versions(), config=config,
        attention_ops=dict(tracker.attention_ops), notes=tuple(notes))


def micro_batches(train: TrainConfig) -> int:
    """Micro-batches per measured step: two show accumulation (gradients alive during forward);
    more repeat the second exactly."""
    return min(max(train.gradient_accumulation_steps, 1), 2)


def describe(spec: ModelSpec, train: TrainConfig, batch_size: int, seq_len: int, attn: str) -> dict:
    return {"model": spec.name, "model_type": spec.model_type, "method": train.method, "dtype": train.dtype,
            "amp": train.amp, "optim": train.optim, "gradient_checkpointing": train.gradient_checkpointing,
            "attn_implementation": attn, "batch_size": batch_size, "seq_len": seq_len}


def measure_step(spec: ModelSpec, train: TrainConfig, *, batch_size: int, seq_len: int,
                 steps: int = 2, warm_start: bool = False, seed: int = 0) -> StepMemory:
    """Tensor accounting of `steps` real training steps on the CPU (random weights).

        >>> measure_step(spec, TrainConfig(finetuning_type="full", dtype="fp32"), batch_size=2, seq_len=64)
    """
    import torch

    from runner.build import build_model, check_oracle_runnable, make_batch, resolve_attn

    started = time.perf_counter()
    check_oracle_runnable(train)
    torch.manual_seed(seed)
    attn, note = resolve_attn(spec, train)
    model = build_model(spec, train, device="cpu", attn=attn)
    # No attention_mask: unpadded rows, which transformers runs as is_causal sdpa either way.
    batch = make_batch(spec.vocab_size, batch_size, seq_len, attention_mask=False)
    return run_tracked(model, train, batch, steps=steps, warm_start=warm_start, mode="cpu", started=started,
                       config=describe(spec, train, batch_size, seq_len, attn), notes=[note] if note else [])
