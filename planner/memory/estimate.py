"""estimate_memory: bytes per GPU for one training configuration, phase by phase.

    >>> mb = estimate_memory(spec, TrainConfig(finetuning_type="lora", cutoff_len=2048), setup)
    >>> mb.peak_bytes, mb.phases["backward"], mb.fits
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from planner.hardware.calibration import DeviceOverheads
from planner.hardware.gpu_spec import GpuSetup
from planner.hardware.host_memory import host_budget_bytes, host_ram_for, process_host_bytes
from planner.memory.breakdown import MemoryBreakdown
from planner.memory.generic import activation_key, generic_activation_model
from planner.memory.overheads import allocator_setting, default_overheads
from planner.memory.step import ActivationModel, activation_model
from planner.memory.zero import ModelStates, model_states
from planner.model.params import linear_layers
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig, memory_key
from planner.trainers import DEFAULT_TRAINER
from planner.units import gib

# input_ids and labels, int64 (an unpadded batch needs no attention_mask: transformers drops an all-ones
# mask for sdpa and builds the causal mask itself for eager)
BATCH_BYTES_PER_TOKEN = 2 * 8


def _device(setup: GpuSetup) -> str:
    return "cpu" if setup.gpu.is_cpu else "cuda"


def _peak(cands, tokens: int, ts: int, seq_len: int):
    best, arg = -1.0, None
    for c in cands:
        v = c.tok * tokens + c.tok_s * ts + c.const + c.seq * seq_len
        if v > best:
            best, arg = v, c
    return int(best), arg


def _split(head, layers, saved_layers, tokens: int, seq_len: int) -> tuple[int, int, int]:
    """(peak, activations, logits-and-loss) of a phase from its two candidate regions; what is left of
    the peak is parameter gradients created so far."""
    ts = tokens * seq_len
    ph, ch = _peak(head, tokens, ts, seq_len)
    pl, cl = _peak(layers, tokens, ts, seq_len)
    if ph >= pl and ch is not None:
        acts = saved_layers.at(tokens, seq_len)
        return ph, acts, ph - acts
    return pl, pl - (int(cl.const) if cl is not None else 0), 0


@dataclass(frozen=True)
class _Static:
    """Everything of one estimate that does not depend on the batch shape."""

    ms: ModelStates
    act: ActivationModel
    base: dict
    states: dict
    resident_grads: int
    notes: tuple[str, ...]
    device: str
    budget: int
    host_budget: int | None
    host_process: int
    host_source: str


_STATIC: dict[tuple, _Static] = {}
_STATIC_MAX = 8192


def _static(model: ModelSpec, train: TrainConfig, setup: GpuSetup) -> _Static:
    key = (model, setup, memory_key(train))
    hit = _STATIC.get(key)
    if hit is not None:
        return hit
    device = _device(setup)
    ms = model_states(model, train, setup)
    accumulating = train.gradient_accumulation_steps > 1
    if model.generic is not None:  # no recipes for this family: fitted fake-tensor traces
        act = generic_activation_model(model, train, ms.grad_scale, device)
    else:
        act = activation_model(model, train, device, grad_scale=ms.grad_scale, grads_resident=accumulating)
    # + the rotary embedding's inv_freq and original_inv_freq buffers (fp32, head_dim / 2 each); the
    # generic path counted every buffer of the built model
    buffers = model.generic.buffer_bytes if model.generic is not None else 4 * model.head_dim
    weights = ms.weights_bytes - ms.quant_constants_bytes + buffers
    notes = list(ms.notes) + list(model.notes)
    if model.generic is not None:
        notes += activation_key(model, train, device)[1]
    if model.vision_params:
        notes.append(f"{model.multimodal}: the vision tower and projector ({model.vision_params:,} parameters) "
                     "load with the model and stay frozen (LLaMA-Factory's default); counted in the weights, "
                     "unquantized; text-only data gives them no activations")
    elif model.multimodal:
        notes.append(f"{model.multimodal}: the language model is planned; the vision tower is not counted "
                     "(install the [train] extra to count it)")
    if train.quantization_bit:
        from planner.trainers import recipe

        r = recipe(train.trainer)
        note = f"k-bit: {r.kbit_note()}"
        if r.kbit_upcast_fp32:
            from planner.memory.weights import weight_bytes

            plain = weight_bytes(model, train.with_(trainer=DEFAULT_TRAINER)).total_bytes
            extra = weight_bytes(model, train).total_bytes - plain
            note += (f". The upcast costs {gib(extra)} of weights here, plus fp32 activations; "
                     f"LLaMA-Factory, Axolotl and TRL >= 0.23 keep them 16-bit (--trainer llamafactory)")
        notes.append(note)
    from planner.stack import stack_notes

    expert_16bit = sum(x.in_features * x.out_features * x.per_layer * x.layers
                       for x in linear_layers(model) if x.expert) * 2
    notes[:0] = stack_notes(train.stack, is_moe=model.is_moe, quantized=bool(train.quantization_bit),
                            trainer=train.trainer, expert_bytes_16bit=expert_16bit)
    if model.is_moe and model.generic is None:
        notes.append("MoE: expert activations approximated as one gated MLP of top-k x expert size (not "
                     "checked against the oracles)")
    st = _Static(
        ms=ms, act=act,
        base={"weights": weights, "quant_constants": ms.quant_constants_bytes, "adapter": ms.adapter_bytes},
        states={"master_weights": ms.master_weights_bytes, "optimizer_states": ms.optimizer_state_bytes,
                "buffers": ms.buffer_bytes},
        resident_grads=ms.gradient_bytes if accumulating else 0, notes=tuple(notes), device=device,
        budget=int(setup.budget_bytes), host_budget=host_budget_bytes(setup), host_process=process_host_bytes(setup),
        host_source="" if setup.gpu.is_cpu else host_ram_for(setup)[1])
    if len(_STATIC) >= _STATIC_MAX:
        _STATIC.clear()
    _STATIC[key] = st
    return st


def estimate_memory(model: ModelSpec, train: TrainConfig, setup: GpuSetup, *,
                    seq_lens: tuple[int, ...] | None = None,
                    overheads: DeviceOverheads | None = None) -> MemoryBreakdown:
    """Memory of one GPU training `model` with `train` on `setup`.

    seq_lens: the token lengths of one micro-batch's samples (padded to the longest); default: every
    sample is cutoff_len long, the worst batch. overheads: a calibration's DeviceOverheads for the
    card (default: uncalibrated constants; none on a CPU setup).
    """
    if seq_lens:
        batch, seq = len(seq_lens), max(seq_lens)
    else:
        batch, seq = train.per_device_train_batch_size, train.cutoff_len
    tokens = batch * seq
    st = _static(model, train, setup)
    ms, act, base, states = st.ms, st.act, st.base, st.states
    batch_bytes = BATCH_BYTES_PER_TOKEN * tokens

    _, facts, flogits = _split(act.forward_head, act.forward_layers, act.saved_layers, tokens, seq)
    bpeak, bacts, blogits = _split(act.backward_head, act.backward_layers, act.saved_layers, tokens, seq)
    if blogits:  # traced models say which part of the head's backward peak is parameter gradients
        blogits -= min(blogits, act.backward_head_grads.at(tokens, seq))
    phase_components = {
        "load": {**base, "batch": batch_bytes},
        "forward": {**base, **states, "gradients": st.resident_grads, "batch": batch_bytes,
                    "activations": facts, "logits": flogits},
        "backward": {**base, **states, "gradients": st.resident_grads + bpeak - bacts - blogits,
                     "batch": batch_bytes, "activations": bacts, "logits": blogits},
        "optimizer": {**base, **states, "gradients": ms.gradient_bytes, "batch": batch_bytes,
                      "optimizer_temporaries": ms.optimizer_temp_bytes},
    }
    phases = {p: sum(c.values()) for p, c in phase_components.items()}
    peak_phase = max(phases, key=lambda p: (phases[p], p == "backward"))
    peak_tensor = phases[peak_phase]

    if st.device == "cpu":
        extra_dev: dict[str, int] = {}
        source = "cpu: no device overheads"
        allocated = reserved = peak_tensor
    else:
        oh = overheads if overheads is not None else default_overheads(setup.gpu, allocator_setting()[0])
        source = oh.source
        allocated = oh.allocated_bytes(peak_tensor, tokens=tokens, hidden=model.hidden_size)
        # logits are materialized unless Liger's fused linear cross-entropy computes the loss in chunks
        vocab = 0 if train.use_liger_kernel else model.vocab_size
        reserved = oh.reserved_from_allocated(allocated, tokens=tokens, hidden=model.hidden_size, vocab=vocab)
        extra_dev = {
            "cuda_context": oh.cuda_context_bytes,
            "cublas_workspace": oh.cublas_workspace_bytes,
            "kernel_temporaries": allocated - peak_tensor - oh.cublas_workspace_bytes,
            "allocator_slack": reserved - allocated,
        }
    components = {k: v for k, v in phase_components[peak_phase].items() if v}
    components.update((k, v) for k, v in extra_dev.items() if v)
    return MemoryBreakdown(
        components=components, phases=phases, phase_components=phase_components, peak_phase=peak_phase,
        peak_tensor_bytes=peak_tensor, peak_bytes=peak_tensor + sum(extra_dev.values()), budget_bytes=st.budget,
        allocated_bytes=int(allocated), reserved_bytes=int(reserved),
        host_bytes=ms.host_bytes, host_budget_bytes=st.host_budget, host_process_bytes=st.host_process,
        host_source=st.host_source, batch_size=batch, seq_len=seq,
        tokens=tokens, device=st.device, overheads_source=source, notes=st.notes, inputs=(model, train, setup),
        per_1k=partial(activations_per_1k_tokens, model, train, setup, seq_len=seq),
    )


def activations_per_1k_tokens(spec: ModelSpec, train: TrainConfig, setup: GpuSetup, *,
                              seq_len: int | None = None) -> dict[str, int]:
    """Activation bytes (activations + logits at the worst of forward/backward) per 1,000 tokens of one
    sequence of `seq_len`, plain / checkpointed / Liger / both: the "GB per 1K tokens" rule of thumb."""
    s = max(1, seq_len or train.cutoff_len)
    out = {}
    variants = (("plain", False, False), ("grad_ckpt", False, True), ("liger", True, False),
                ("liger_grad_ckpt", True, True))
    if spec.generic is not None:
        # each variant is a fake-tensor trace of its own (seconds, cold): only the configuration asked
        # for, and Liger is not modeled for these families
        variants = tuple(v for v in variants if v[2] == train.gradient_checkpointing and not v[1])
    for name, liger, gc in variants:
        t = train.with_(use_liger_kernel=liger, gradient_checkpointing=gc, per_device_train_batch_size=1,
                        cutoff_len=s, gradient_accumulation_steps=1)
        mb = estimate_memory(spec, t, setup)
        worst = max(mb.phase_components[p]["activations"] + mb.phase_components[p]["logits"]
                    for p in ("forward", "backward"))
        out[name] = int(worst * 1000 / s)
    return out
