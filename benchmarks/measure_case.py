"""Measure one Case in this process (benchmarks/harness.py runs it in a fresh subprocess).

CUDA: the card's NVML usage is read before CUDA is initialized (the baseline), so the device
figure includes the CUDA context. The model is built on the card with random weights, the cache is
emptied and the peaks reset after loading, then `steps` optimizer steps run with runner.step's
train_step; CudaPhases keeps each phase's allocated/reserved peak, and runner.nvml's sampler
(every 10 ms) the device peak (also per phase). With a budget, the allocator is capped after one warm-up
step (when lazily loaded kernels are in the context) so that allocator + context fit the budget.

CPU: the same steps under runner.measure.CpuProbe (tensor accounting), plus the process's max RSS.

    >>> result = measure(Case("x", "tiny", {"cutoff_len": 64}), device="cpu")
    >>> result["status"], result["peak"]["allocated_bytes"]
"""

from __future__ import annotations

import gc
import os
import statistics
import time
import traceback
from typing import Any

from benchmarks.matrix import Case
from planner.model.params import count_params

FORMAT = 1
STEP_PHASES = ("forward", "backward", "optimizer")


# -- device ----------------------------------------------------------------------------------------------
def context_bytes(torch, nvml) -> int | None:
    """Device memory outside the caching allocator right now: this process's usage when listed,
    else the card's usage over the baseline (true only while nothing else runs on the card)."""
    own = nvml.process_bytes()
    if own is not None:
        return own - torch.cuda.memory_reserved()
    used = nvml.used_bytes()
    if used is None or nvml.baseline_used_bytes is None:
        return None
    return used - nvml.baseline_used_bytes - torch.cuda.memory_reserved()


def gpu_info(torch, nvml) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {"name": props.name, "memory_bytes": int(props.total_memory),
                            "compute_capability": f"{props.major}.{props.minor}", "vendor": "nvidia"}
    if nvml.bound:  # NVML's name, total memory and driver
        info.update(nvml.info)
    return info


def _rss_max_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


# -- one case ------------------------------------------------------------------------------------------------
def measure(case: Case, *, device: str) -> dict[str, Any]:
    """Run one case and return its result (never raises for OOM or build errors: see `status`)."""
    started = time.perf_counter()
    cuda = device.startswith("cuda")
    probe = None
    nvml = None
    if cuda:
        from runner.nvml import NvmlSampler

        # every card's usage read now, before CUDA exists in this process (the baseline); sampled every 10 ms
        nvml = NvmlSampler(interval_s=0.01, phase_fn=lambda: probe.phase)
    import torch

    from runner.accounting import micro_batches
    from runner.build import make_batch
    from runner.report import measurement_stack
    from runner.step import make_optimizer, train_step

    spec, train = case.spec(), case.train_config()
    # Memory: two micro-batches show accumulation (more repeat the second). Throughput cases
    # (config_quality) run every micro-batch, so the optimizer step is amortized as in training.
    micro = max(1, train.gradient_accumulation_steps) if case.group == "quality" else micro_batches(train)
    res: dict[str, Any] = {
        "format": FORMAT, "config": case.to_json(), "device": "cuda" if cuda else "cpu", "status": "error",
        "error": None, "model": {"name": spec.name, "hidden_size": spec.hidden_size, "vocab_size": spec.vocab_size,
                                 "params": count_params(spec).total},
        "tokens": case.tokens, "hidden_size": spec.hidden_size, "micro_batches": micro,
        "stack": measurement_stack(torch),
        "notes": [], "phases": {}, "peak": {}, "context": {}, "timing": {},
    }
    torch.manual_seed(0)
    step_s: list[float] = []
    try:
        if cuda:
            torch.zeros(1, device="cuda")
            torch.cuda.synchronize()
            nvml.bind(0)  # the first visible card, the one this process uses
            res["gpu"] = gpu_info(torch, nvml)
            at_init = context_bytes(torch, nvml)
            if at_init is not None:
                res["context"] = {"baseline_used_bytes": nvml.baseline_used_bytes, "at_init_bytes": at_init,
                                  "source": "process" if nvml.process_bytes() is not None else "device"}
            probe = CudaPhases(torch)
            nvml.start()
            probe.begin_load()
        else:
            res["gpu"] = {"name": "cpu", "vendor": "cpu"}
        t0 = time.perf_counter()
        model, notes = build_measured(spec, train, device="cuda" if cuda else "cpu")
        res["notes"] += notes
        optimizer, note = make_optimizer(model, train)
        res["notes"] += [note] if note else []
        # Unpadded rows of cutoff_len tokens (packed data): no attention_mask, as the CPU oracles do.
        batches = [make_batch(spec.vocab_size, train.per_device_train_batch_size, train.cutoff_len,
                              device="cuda" if cuda else "cpu", attention_mask=False) for _ in range(micro)]
        res["timing"]["build_seconds"] = round(time.perf_counter() - t0, 3)
        if cuda:
            gc.collect()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            if case.budget_bytes:
                _warm_up_and_cap(torch, model, optimizer, batches, train, case.budget_bytes, nvml, res)
            res["context"]["after_load_allocated_bytes"] = torch.cuda.memory_allocated()
            res["context"]["after_load_reserved_bytes"] = torch.cuda.memory_reserved()
            nvml.reset()
            probe.start()
        else:
            probe = _cpu_probe(model, optimizer, train, batches, case.budget_bytes, res["notes"])
        for _ in range(case.steps):
            t = time.perf_counter()
            train_step(model, optimizer, batches, train, mark=probe.mark)
            if cuda:
                torch.cuda.synchronize()
            step_s.append(time.perf_counter() - t)
        res["status"] = "ok"
    except torch.OutOfMemoryError as e:  # CUDA OOM, or the CPU probe's simulated one
        res["status"], res["error"] = "oom", f"{type(e).__name__}: {str(e)[:400]}"
        res["oom_phase"] = getattr(probe, "phase", None)
    except Exception as e:
        oom = "out of memory" in str(e).lower()  # bitsandbytes / cuBLAS report OOM as RuntimeError
        res["status"] = "oom" if oom else "error"
        res["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}"
    finally:
        if probe is not None:
            probe.stop()
        if nvml is not None:
            nvml.stop()
    if probe is not None:
        _fill_peaks(res, probe.summary(), nvml, cuda)
    if step_s:
        steady = step_s[1:] or step_s
        res["timing"]["step_seconds"] = [round(s, 4) for s in step_s]
        res["timing"]["tokens_per_second"] = round(case.tokens * micro / statistics.median(steady), 1)
    res["timing"]["total_seconds"] = round(time.perf_counter() - started, 3)
    return res


def build_measured(spec, train, *, device: str) -> tuple[Any, list[str]]:
    """(model ready to train, notes), built by runner.build as `plan --apply` builds it, random weights on the
    device: Liger Kernel's patches first (CUDA only); a k-bit plan on CUDA is built in its compute dtype and
    its decoder Linears swapped for bitsandbytes ones (kbit="swap": writing an 8B model to disk for
    bitsandbytes to quantize on load takes minutes), then train.trainer's recipe's method step (peft's
    prepare_model_for_kbit_training with its fp32 upcast, or LLaMA-Factory's without). The transient 16-bit
    copy is freed before measuring (the cache is emptied and the peaks reset after loading)."""
    from runner.build import apply_liger, build_model, cpu_4bit_available

    notes: list[str] = []
    if apply_liger(spec, train, device, notes):
        notes.append("Liger Kernel applied (runner.build)")
    # bitsandbytes >= 0.48 loads 4-bit on the CPU (the CPU oracle's way); everything else k-bit swaps
    on_cpu = device == "cpu" and train.quantization_bit == 4 and cpu_4bit_available()
    swap = bool(train.quantization_bit) and not on_cpu
    model = build_model(spec, train, device=device, kbit="swap" if swap else "load")
    if swap:
        then = f"the {train.trainer} recipe's method step (runner.build.apply_method)"
        notes.append(f"{train.quantization_bit}-bit weights quantized from a random {train.dtype} build "
                     f"(bitsandbytes, lm_head and embeddings unquantized), then {then}")
    return model, notes


class CudaPhases:
    """Allocator peaks per phase: max_memory_allocated/reserved since the previous mark (the peak stats
    are reset at every mark), kept per (step, phase): runner.measure.CudaProbe's figures, with a "ready" mark
    after loading and without CudaProbe's own NVML sampler (the sampler here is shared with the context
    readings and samples every 10 ms)."""

    kind = "cuda"

    def __init__(self, torch):
        self.torch, self.phase, self.step = torch, "load", 0
        self.peaks: dict[tuple[int, str], tuple[int, int]] = {}

    def begin_load(self) -> None:
        self.torch.cuda.reset_peak_memory_stats()

    def start(self) -> None:
        """Loading is over: what follows until the first forward (nothing) is not attributed to it."""
        self._close()
        self.phase = "ready"

    def _close(self) -> None:
        cuda = self.torch.cuda
        key = (self.step, self.phase)
        old = self.peaks.get(key, (0, 0))
        self.peaks[key] = (max(old[0], cuda.max_memory_allocated()), max(old[1], cuda.max_memory_reserved()))
        cuda.reset_peak_memory_stats()

    def mark(self, phase: str) -> None:
        self._close()
        if phase == "forward" and self.phase in ("load", "ready", "end"):
            self.step += 1
        self.phase = phase

    def stop(self) -> None:
        self._close()

    def summary(self) -> dict[str, Any]:
        phases: dict[str, int] = {}
        reserved: dict[str, int] = {}
        steps: dict[int, dict[str, int]] = {}
        for (step, phase), (alloc, res) in self.peaks.items():
            if phase == "ready":
                continue
            name = "between_steps" if phase == "end" else phase
            phases[name] = max(phases.get(name, 0), alloc)
            reserved[name] = max(reserved.get(name, 0), res)
            if step and phase != "end":
                steps.setdefault(step, {})[phase] = alloc
        return {"phases": phases, "phases_reserved": reserved,
                "steps": [{"step": s, **steps[s]} for s in sorted(steps)],
                "method": "torch.cuda.max_memory_allocated/reserved per phase (reset at each mark)"}


class RssProbe:
    """Stand-in when tensor accounting is unavailable: the process RSS at each phase boundary."""

    kind = "rss"

    def __init__(self):
        self.phase, self.peaks = "load", {}

    def mark(self, phase: str) -> None:
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), _rss_now_bytes())
        self.phase = phase

    def stop(self) -> None:
        self.mark("end")

    def summary(self) -> dict[str, Any]:
        return {"phases": {p: b for p, b in self.peaks.items() if p != "end"},
                "method": "process RSS at phase boundaries"}


def _rss_now_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_probe(model, optimizer, train, batches, budget, notes: list[str]):
    """runner.measure.CpuProbe (tensor accounting) when it works here, else RssProbe."""
    try:
        from runner.measure import CpuProbe

        probe = CpuProbe(model, optimizer, checkpointing=train.gradient_checkpointing, budget_bytes=budget)
        probe.start()
        probe.track_inputs([t for b in batches for t in b.values()])
        return probe
    except (ImportError, TypeError, AttributeError) as e:
        notes.append(f"tensor accounting unavailable ({type(e).__name__}: {e}); measured process RSS")
        return RssProbe()


WARM_UP_TOKENS = 256  # per row: enough to load the step's kernels, small enough to stay inside the budget


def _warm_up_and_cap(torch, model, optimizer, batches, train, budget: int, nvml, res) -> None:
    """One short uncapped step (loads the kernels into the context), then cap the allocator to budget - context.

    The warm-up rows are cut to WARM_UP_TOKENS: a full-length uncapped step could take more than the
    budget, which is the card of a case running beside others in a GPU session (seen on an H200: a
    15,824-token probe failed its uncapped warm-up while neighbours held the rest of the card).
    """
    from runner.step import train_step

    short = [{k: v[:, :WARM_UP_TOKENS] for k, v in b.items()} for b in batches]
    train_step(model, optimizer, short, train)
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    context = context_bytes(torch, nvml) or 0
    fraction = (budget - context) / total
    res["context"].update({"after_warmup_bytes": context, "budget_bytes": budget, "memory_fraction": fraction})
    if fraction <= 0 or torch.cuda.memory_reserved() > budget - context:
        raise torch.OutOfMemoryError(f"the loaded model alone exceeds the budget of {budget:,} bytes")
    torch.cuda.set_per_process_memory_fraction(min(fraction, 1.0))
    torch.cuda.reset_peak_memory_stats()


def _fill_peaks(res: dict[str, Any], summary: dict[str, Any], nvml, cuda: bool) -> None:
    res["probe"] = summary
    phases = summary.get("phases", {})
    reserved = summary.get("phases_reserved", {})
    for name in ("load", *STEP_PHASES):
        if name in phases:
            res["phases"][name] = {"allocated_bytes": phases[name], "reserved_bytes": reserved.get(name)}
    train_phases = [p for p in STEP_PHASES if p in phases]
    if not train_phases:
        return
    peak_phase = max(train_phases, key=lambda p: phases[p])
    peak = {"phase": peak_phase, "allocated_bytes": phases[peak_phase]}
    if cuda:
        peak["reserved_bytes"] = max(reserved.get(p, 0) for p in train_phases)
        baseline = nvml.baseline_used_bytes if nvml is not None else None
        if nvml is not None and nvml.max_process_bytes:
            # this process's own usage: true whatever else shares the card
            peak["device_bytes"], peak["device_source"] = nvml.max_process_bytes, "process"
            for p, used in nvml.process_by_phase.items():
                if p in res["phases"]:
                    res["phases"][p]["device_bytes"] = used
        if nvml is not None and nvml.max_used_bytes and baseline is not None:
            # the card's usage over its usage before this process started CUDA (true when alone)
            peak["device_total_delta_bytes"] = nvml.max_used_bytes - baseline
            if "device_bytes" not in peak:
                peak["device_bytes"], peak["device_source"] = nvml.max_used_bytes - baseline, "device"
                for p, used in nvml.used_by_phase.items():
                    if p in res["phases"]:
                        res["phases"][p]["device_bytes"] = used - baseline
    else:  # no caching allocator on the CPU: reserved = live tensors; the process RSS stands for "device"
        peak["reserved_bytes"] = phases[peak_phase]
        peak["device_bytes"] = _rss_max_bytes()
    res["peak"] = peak
