"""Model states per GPU: plain (DDP) or DeepSpeed ZeRO 1/2/3 over GpuSetup.world_size, with offload.

DeepSpeed mixed precision (bf16/fp16 `dtype`) keeps 16-bit parameters and gradients on the GPU and fp32
master weights, fp32 Adam states and (at step time) fp32 gradients per rank partition
(deepspeed/runtime/zero/stage_1_and_2.py: single_partition_of_fp32_groups; stage3.py:
fp32_partitioned_groups_flat). ZeRO-1 partitions the optimizer side, ZeRO-2 also the 16-bit gradients,
ZeRO-3 also the 16-bit parameters (frozen ones included) and gathers one module at a time.

    >>> states = model_states(spec, TrainConfig(deepspeed_stage=2), setup)
    >>> states.optimizer_state_bytes, states.host_bytes
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import UserError
from planner.hardware.gpu_spec import GpuSetup
from planner.memory.trainable import TrainableState, optimizer_state_bytes, trainable_state
from planner.memory.weights import WeightBytes, weight_bytes
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig, conflicts

# HF TrainingArguments' DeepSpeed "auto" values (transformers integrations/deepspeed.py
# trainer_config_finalize): reduce_bucket_size = h*h, stage3_prefetch_bucket_size = 0.9*h*h.
PREFETCH_FACTOR = 0.9
# DeepSpeed stage3 sub_group_size default: fp32 gradients are materialized one sub-group at a time.
SUB_GROUP_SIZE = 1_000_000_000


@dataclass(frozen=True)
class ModelStates:
    """Per-GPU bytes of everything that is not an activation. Host bytes are per node."""

    weights_bytes: int
    quantized_bytes: int  # part of weights_bytes: packed NF4 / int8 weights
    quant_constants_bytes: int
    adapter_bytes: int
    gradient_bytes: int  # gradients alive at the optimizer step (this rank)
    master_weights_bytes: int
    optimizer_state_bytes: int
    optimizer_temp_bytes: int  # extra during optimizer.step() (incl. DeepSpeed's fp32 gradient partition)
    buffer_bytes: int  # DDP gradient buckets, ZeRO reduce buckets, ZeRO-3 gathered modules
    grad_scale: float  # fraction of each parameter gradient kept during backward (ZeRO-2/3: 1/N)
    host_bytes: int
    notes: tuple[str, ...] = ()


# the rules of planner.train_config.conflicts about what ZeRO can partition or offload; whether DeepSpeed
# runs a bitsandbytes optimizer is the command line's and the exports' concern, not the byte count's
_ZERO_FIELDS = frozenset({"deepspeed_stage", "offload", "quantization_bit"})


def _check(train: TrainConfig) -> None:
    for conflict in conflicts(train):
        if set(conflict.fields) <= _ZERO_FIELDS and {"deepspeed_stage", "offload"} & set(conflict.fields):
            raise UserError(conflict.message, conflict.hint)


def largest_module_params(spec: ModelSpec) -> int:
    """Largest single module's parameters (what ZeRO-3 gathers at once): the embeddings, usually."""
    from planner.model.params import linear_layers

    biggest = max((x.in_features * x.out_features * (1 if x.module_linear else x.per_layer)
                   for x in linear_layers(spec)), default=0)
    return max(spec.vocab_size * spec.hidden_size, biggest)


def model_states(spec: ModelSpec, train: TrainConfig, setup: GpuSetup) -> ModelStates:
    _check(train)
    w: WeightBytes = weight_bytes(spec, train)
    st: TrainableState = trainable_state(spec, train)
    n = max(1, setup.world_size)
    stage = train.deepspeed_stage
    if stage == 0:
        # torch DDP (world > 1) copies gradients into its buckets unless gradient_as_bucket_view=True,
        # which HF Trainer does not set: one more gradient-sized buffer.
        ddp = st.gradient_bytes if n > 1 else 0
        notes = ("DDP: gradient buckets hold a second copy of the gradients",) if ddp else ()
        return ModelStates(
            weights_bytes=w.total_bytes, quantized_bytes=w.quantized_bytes,
            quant_constants_bytes=w.quant_constants_bytes, adapter_bytes=st.adapter_bytes,
            gradient_bytes=st.gradient_bytes, master_weights_bytes=0,
            optimizer_state_bytes=st.optimizer_state_bytes, optimizer_temp_bytes=st.optimizer_temp_bytes,
            buffer_bytes=ddp, grad_scale=1.0, host_bytes=0, notes=notes)

    mixed = train.dtype in ("bf16", "fp16")
    p16 = 2 if mixed else 4  # bytes of the module's parameters and gradients under DeepSpeed
    pt = st.params
    full = train.finetuning_type == "full"
    h = spec.hidden_size
    # trainable parameters in the module dtype; frozen base weights stay as loaded
    trainable_16 = pt * p16
    frozen = 0 if full else w.total_bytes
    base = trainable_16 if full else frozen
    adapter = 0 if full else trainable_16
    weights = base if stage < 3 else base // n
    if stage == 3:
        adapter //= n
    grads16 = pt * p16 if stage == 1 else pt * p16 // n
    master = pt * 4 // n if mixed else 0
    states = optimizer_state_bytes(train.optim, st.tensors, st.counts, 4) // n
    fp32_grads = pt * 4 // n if mixed else 0
    if stage == 3:
        fp32_grads = min(pt // n, SUB_GROUP_SIZE) * 4 if mixed else 0
    temps = {"adamw_torch": pt * 4 // n, "adamw_torch_forloop": 0}.get(train.optim, 0)
    buffers = 0
    if stage >= 2:
        buffers += 2 * h * h * p16  # reduce bucket (contiguous gradients) + its reduction copy
    if stage == 3:
        # deepspeed estimate_zero3_model_states_mem_needs: largest_layer_memory = 4 * largest_layer
        # (its 16-bit parameters gathered + their gradients), plus the prefetch bucket.
        buffers += 4 * largest_module_params(spec) + int(PREFETCH_FACTOR * h * h) * p16
    host = 0
    notes = []
    per_node = setup.count
    if train.offload in ("optimizer", "params"):
        host += (master + states + fp32_grads) * per_node
        master = states = fp32_grads = temps = 0
        if stage >= 2:
            grads16 = 0  # reduced straight into pinned host buffers; the reduce bucket stays
        notes.append("optimizer offload: fp32 master weights, Adam states and fp32 gradients in host RAM")
    if train.offload == "params":
        host += (weights + adapter) * per_node
        weights = adapter = 0
        notes.append("parameter offload: 16-bit parameters in host RAM, gathered per module")
    return ModelStates(
        weights_bytes=weights, quantized_bytes=w.quantized_bytes if stage < 3 else 0,
        quant_constants_bytes=w.quant_constants_bytes if stage < 3 else 0, adapter_bytes=adapter,
        gradient_bytes=grads16, master_weights_bytes=master, optimizer_state_bytes=states,
        optimizer_temp_bytes=temps + fp32_grads, buffer_bytes=buffers,
        grad_scale=1.0 if stage == 1 else 1.0 / n, host_bytes=host, notes=tuple(notes))
