"""Throughput and time: FLOPs per token by method, achievable FLOP/s, padding, quantization, communication.

    step time = GA x (compute + dequantization + per-layer overhead + exposed comm per micro step)
                + optimizer step + offload transfers + exposed comm per optimizer step
    tokens/s  = real (non-pad) tokens of one optimizer step over all GPUs / step time

Every constant below is either a cited fact or a labelled assumption that a calibration run replaces
(`Efficiency`). The model ranks candidate configs; absolute times are indicative (+-30% before
calibration).

    >>> tp = estimate_throughput(spec, config, setup, lengths=profile, epochs=3)
    >>> tp.tokens_per_s, tp.epoch_seconds
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from planner.hardware.gpu_spec import GpuSetup
from planner.model.params import active_params, count_params, linear_layers
from planner.model.params import lora_adapter_params as _adapter_params
from planner.model.spec import ModelSpec
from planner.search.lengths import PACKING_EFFICIENCY, LengthProfile
from planner.train_config import TrainConfig


@dataclass(frozen=True)
class Efficiency:
    """Achievable fractions of the datasheet peaks. Defaults are assumptions until calibrated."""

    # Hardware FLOPs utilization (recompute counted) of an HF Trainer step in bf16 with SDPA. MFU of
    # 35-45% is the range reported for well-tuned PyTorch training of 7B-70B models on A100/H100
    # (PaLM reports 46% MFU on TPU, Chowdhery et al. 2022, Table 3; Megatron-LM 2021 reports 52% on
    # A100); HF Trainer with LoRA sits at the low end. Assumption: 0.40.
    hfu: float = 0.40
    # Fraction of the datasheet memory bandwidth a dequantization kernel reaches (STREAM-like copy).
    bandwidth: float = 0.70
    # Host-side launch and Python cost per decoder layer per pass (forward, backward, recompute):
    # eager PyTorch launches ~40-80 kernels per layer and pass at ~5-10 us each. Assumption: 0.35 ms.
    layer_pass_overhead_s: float = 0.35e-3
    # Fixed cost per optimizer step (zero_grad, scheduler, logging, dataloader). Assumption: 20 ms.
    step_overhead_s: float = 0.02
    # Liger Kernel reports +20% throughput on Llama-3-8B (linkedin/Liger-Kernel README); part of that
    # came from the larger batch its memory savings allow, which the search models separately.
    liger_speedup: float = 1.10
    # bitsandbytes LLM.int8 matmuls (row-wise activation quantization, fp16 outlier path) run slower than
    # bf16 GEMMs; Dettmers et al. 2022 (LLM.int8(), Sec. 5) report slowdowns for models below ~6.7B.
    # Assumption: 1.3x on the frozen linear FLOPs.
    int8_slowdown: float = 1.30
    # Share of collective time hidden behind compute (DeepSpeed overlap_comm, DDP bucketing). Assumption.
    comm_overlap: float = 0.50
    # Host<->device copy bandwidth per GPU for ZeRO offload (PCIe 4.0 x16 ~ 25 GB/s peak). Assumption.
    pcie_gbs: float = 20.0
    # DeepSpeed CPUAdam updates per second per node (AVX512/AVX2, many cores). Ren et al. 2021
    # (ZeRO-Offload) report CPU-Adam several times faster than torch's CPU Adam. Assumption: 1e9/s.
    cpu_adam_params_per_s: float = 1.0e9
    # Per-GPU bus bandwidth between nodes (GB/s): a 200 Gb/s NIC per GPU. Assumption.
    internode_gbs: float = 25.0
    source: str = "defaults (uncalibrated)"


DEFAULT_EFFICIENCY = Efficiency()

# Intra-node collective bus bandwidth per GPU (GB/s), by card family. Assumptions in the range that
# nccl-tests all_reduce_perf reports for these interconnects (NVLink generations vs PCIe); the first
# matching key wins.
INTRA_NODE_GBS: tuple[tuple[str, float], ...] = (
    ("h100-pcie", 40.0), ("h100-nvl", 40.0),  # PCIe Gen5 between cards (NVL bridges pairs only)
    ("h800", 160.0), ("a800", 160.0),  # NVLink cut to 400 GB/s
    ("h100", 360.0), ("h200", 360.0), ("h20", 360.0),  # NVLink 4 (900 GB/s bidirectional)
    ("a100", 230.0),  # NVLink 3 (600 GB/s bidirectional)
    ("v100", 130.0),  # NVLink 2
    ("mi300", 300.0),  # Infinity Fabric
    ("rtx-3090", 10.0), ("rtx-4090", 10.0), ("rtx-5090", 16.0),  # GeForce: no P2P, through the host
)
PCIE_DEFAULT_GBS = 16.0  # data-center PCIe Gen4 cards (L40S, L4, A10, A6000, T4)

# Peak when the catalog does not know the card (generic "24GB", NVML-only cards). Assumption.
UNKNOWN_TFLOPS = 100.0
UNKNOWN_BANDWIDTH_GBS = 900.0
CPU_TFLOPS = 1.0  # a many-core AVX-512 host in bf16; CPU training is a test path, not a target


@dataclass(frozen=True)
class Throughput:
    """Predicted speed of one config. Times are None when the dataset size is unknown."""

    tokens_per_s: float  # real (non-pad) tokens per second, all GPUs together
    step_seconds: float  # one optimizer step
    micro_step_seconds: float
    padding_efficiency: float  # real tokens / computed tokens
    flops_per_token: float  # model FLOPs (no recompute) per real token
    mfu: float  # model FLOPs utilization against the datasheet peak
    epoch_seconds: float | None = None
    total_seconds: float | None = None
    epochs: float | None = None
    steps_per_epoch: int | None = None
    breakdown: dict[str, float] = field(default_factory=dict)  # seconds per optimizer step, by part
    assumptions: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {
            "tokens_per_s": round(self.tokens_per_s, 1),
            "epoch_seconds": None if self.epoch_seconds is None else round(self.epoch_seconds, 1),
            "total_seconds": None if self.total_seconds is None else round(self.total_seconds, 1),
            "epochs": self.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "step_seconds": round(self.step_seconds, 4),
            "padding_efficiency": round(self.padding_efficiency, 4),
            "flops_per_token": round(self.flops_per_token),
            "mfu": round(self.mfu, 4),
            "breakdown_s": {k: round(v, 4) for k, v in self.breakdown.items()},
            "assumptions": list(self.assumptions),
        }


# -- FLOPs ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FlopTerms:
    """Per-token matmul FLOP terms (2 FLOPs per multiply-add), forward pass only."""

    layers: float  # 2 x active decoder-layer weights
    head: float  # 2 x h x V (the LM head matmul runs whether tied or not)
    adapter: float  # 2 x LoRA A/B weights
    attn_per_ctx: float  # 4 x layers x n_heads x head_dim: QK^T and AV per attended position
    trainable_layer_share: float  # freeze tuning: share of the layer weights that train
    quant_weights: int  # weights bitsandbytes quantizes (nn.Linear in the decoder layers)


def lora_adapter_params(spec: ModelSpec, train: TrainConfig) -> int:
    """Adapter parameters of a LoRA config (0 otherwise)."""
    return _adapter_params(spec, train.lora_rank, tuple(train.lora_target)) if train.is_lora else 0


@lru_cache(maxsize=1024)
def flop_terms(spec: ModelSpec, train: TrainConfig) -> FlopTerms:
    counts = count_params(spec)
    active = active_params(spec)
    layer_w = active - counts.embeddings - counts.lm_head - counts.norms
    head = spec.hidden_size * spec.vocab_size
    share = 1.0
    if train.finetuning_type == "freeze":
        share = min(1.0, train.freeze_trainable_layers / spec.num_layers)
    quant = sum(x.weight_numel for x in linear_layers(spec) if x.module_linear) if train.quantization_bit else 0
    return FlopTerms(
        layers=2.0 * layer_w, head=2.0 * head, adapter=2.0 * lora_adapter_params(spec, train),
        attn_per_ctx=4.0 * spec.num_layers * spec.num_heads * spec.head_dim,
        trainable_layer_share=share, quant_weights=quant,
    )


def step_flops(terms: FlopTerms, train: TrainConfig, rows: float, row_len: float, row_len_sq: float
               ) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one micro step of `rows` rows padded to `row_len` tokens.

    Kaplan et al. 2020 (Sec. 2.1): forward 2N per token, backward 4N (input and weight gradients), so
    6N for full training. A frozen weight needs only the input gradient: 2N backward, 4N in all (LoRA).
    Attention scores and values add 4 x layers x d_attn per attended position forward (PaLM, Chowdhery
    et al. 2022, App. B: 6N + 12 L H Q T per token counts fwd+bwd); causal attention computes half the
    positions (FlashAttention-2 benchmark's causal FLOP count), so per row 4 L d s^2 / 2 forward.
    Full activation checkpointing re-runs each layer's forward once more (Korthikanti et al. 2022).
    """
    tokens = rows * row_len
    attn_fwd = terms.attn_per_ctx * rows * row_len_sq / 2.0
    lin_fwd = (terms.layers + terms.head + terms.adapter) * tokens
    if train.finetuning_type == "full":
        bwd = 2.0 * lin_fwd
    elif train.finetuning_type == "freeze":
        bwd = (2.0 * (terms.layers + terms.head) + 2.0 * terms.layers * terms.trainable_layer_share) * tokens
    else:  # LoRA: input gradients of the frozen weights, both gradients of the adapters
        bwd = (terms.layers + terms.head + 2.0 * terms.adapter) * tokens
    bwd += 2.0 * attn_fwd
    model = lin_fwd + attn_fwd + bwd
    recompute = (terms.layers + terms.adapter) * tokens + attn_fwd if train.gradient_checkpointing else 0.0
    return model, model + recompute


# -- hardware -------------------------------------------------------------------------------------

def peak_flops(setup: GpuSetup, train: TrainConfig) -> float:
    gpu = setup.gpu
    if gpu.is_cpu:
        return CPU_TFLOPS * 1e12
    tflops = gpu.bf16_tflops or UNKNOWN_TFLOPS
    if train.dtype == "fp32" and not train.amp:
        tflops /= 4.0  # TF32 tensor cores run at half the bf16 rate, plain fp32 slower still
    return tflops * 1e12


def intra_node_gbs(setup: GpuSetup) -> float:
    name = setup.gpu.name.lower().replace(" ", "-")
    for key, gbs in INTRA_NODE_GBS:
        if key in name:
            return gbs
    return PCIE_DEFAULT_GBS


def collective_gbs(setup: GpuSetup, eff: Efficiency) -> float:
    """Bus bandwidth of a ring spanning the whole job: the slowest link sets it."""
    gbs = intra_node_gbs(setup)
    if setup.nodes > 1:
        gbs = min(gbs, eff.internode_gbs)
    return gbs


def _rows(train: TrainConfig, lengths: LengthProfile | None, packing: bool, group_by_length: bool
          ) -> tuple[float, float, float]:
    """(real tokens per row, mean padded row length, mean squared row length) for this batching."""
    b, c = train.per_device_train_batch_size, train.cutoff_len
    if lengths is None or packing:
        real = c * (PACKING_EFFICIENCY if (packing and lengths is not None) else 1.0)
        return real, float(c), float(c * c)
    real = lengths.mean_kept(c)
    if b == 1:  # a single sample is never padded
        return real, real, lengths.expected_max_sq(1, c)
    if group_by_length:
        row, row_sq = lengths.grouped_rows(b, c)
        return real, max(row, real), max(row_sq, real * real)
    return real, lengths.expected_max(b, c), lengths.expected_max_sq(b, c)


# -- communication and offload --------------------------------------------------------------------

def _comm_seconds(spec: ModelSpec, train: TrainConfig, setup: GpuSetup, eff: Efficiency,
                  trainable: int, total_params: int) -> tuple[float, float]:
    """(exposed seconds per micro step, per optimizer step) of the collectives.

    Ring collectives move (n-1)/n of the buffer per GPU for reduce-scatter or all-gather, twice that for
    all-reduce (Patarasuk & Yuan 2009). Volumes per ZeRO stage follow Rajbhandari et al. 2020 (ZeRO,
    Sec. 7): stages 0-2 move 2 x the gradients per step, stage 3 adds the parameter all-gathers in
    forward and backward (and again in the recomputed forward).
    """
    n = setup.world_size
    if n <= 1:
        return 0.0, 0.0
    bw = collective_gbs(setup, eff) * 1e9
    frac = (n - 1) / n
    grad_b = 4 if (train.is_lora or train.dtype == "fp32") else 2
    grads = trainable * grad_b
    exposed = 1.0 - eff.comm_overlap
    stage = train.deepspeed_stage
    if stage in (0, 1):  # DDP all-reduce (no_sync during accumulation); ZeRO-1 reduce-scatter + gather
        return 0.0, exposed * 2 * frac * grads / bw
    if stage == 2:  # DeepSpeed ZeRO-2 reduces each micro step's gradients into the partitions
        return exposed * frac * grads / bw, exposed * frac * trainable * 2 / bw
    weight_b = 2 if not train.quantization_bit else train.quantization_bit / 8
    gathers = 3 if train.gradient_checkpointing else 2
    per_micro = frac * (gathers * total_params * weight_b + grads) / bw
    return exposed * per_micro, 0.0


def _offload_seconds(train: TrainConfig, setup: GpuSetup, eff: Efficiency, trainable: int,
                     total_params: int) -> tuple[float, float]:
    """(seconds per micro step, per optimizer step) added by ZeRO offload to host memory."""
    if train.offload == "none" or setup.gpu.is_cpu:
        return 0.0, 0.0
    n = setup.world_size
    local = trainable / n
    pcie = eff.pcie_gbs * 1e9
    # ZeRO-Offload: 16-bit gradients down, CPU Adam on the fp32 partition, 16-bit parameters back up.
    per_step = 2 * local * 2 / pcie + local * setup.count / eff.cpu_adam_params_per_s
    per_micro = 0.0
    if train.offload == "params":  # ZeRO-Infinity: every pass fetches this rank's parameter shard
        passes = 3 if train.gradient_checkpointing else 2
        per_micro = passes * (total_params / n) * 2 / pcie
    return per_micro, per_step


# -- the estimate ---------------------------------------------------------------------------------

def estimate_throughput(spec: ModelSpec, train: TrainConfig, setup: GpuSetup, *,
                        lengths: LengthProfile | None = None, packing: bool = False,
                        group_by_length: bool = False, epochs: float | None = None,
                        train_share: float = 1.0, efficiency: Efficiency = DEFAULT_EFFICIENCY) -> Throughput:
    """Predicted tokens/s and run time of `train` on `setup` for data with these `lengths`.

    `train_share` is the part of the samples that trains (1 - val_size). Without `lengths` every row
    is assumed full (cutoff_len real tokens) and no epoch time is given.
    """
    eff = efficiency
    terms = flop_terms(spec, train)
    real, row_len, row_sq = _rows(train, lengths, packing, group_by_length)
    b = train.per_device_train_batch_size
    ga = train.gradient_accumulation_steps
    model_f, hw_f = step_flops(terms, train, b, row_len, row_sq)
    if train.quantization_bit == 8:  # int8 matmuls on the frozen weights are slower than bf16 GEMMs
        hw_f += (eff.int8_slowdown - 1.0) * terms.layers * b * row_len * (3 if train.gradient_checkpointing else 2)
    achieved = peak_flops(setup, train) * eff.hfu * (eff.liger_speedup if train.use_liger_kernel else 1.0)
    compute = hw_f / achieved

    # QLoRA: bitsandbytes dequantizes each quantized weight to 16 bits before its matmul, in the forward,
    # again for the input gradient in the backward (bnb MatMul4Bit.backward) and in the recomputed
    # forward: read k/8 bytes, write 2 bytes per weight, bandwidth-bound.
    dequant = 0.0
    if train.quantization_bit:
        passes = 3 if train.gradient_checkpointing else 2
        bw = (setup.gpu.bandwidth_gbs or UNKNOWN_BANDWIDTH_GBS) * 1e9 * eff.bandwidth
        dequant = passes * terms.quant_weights * (train.quantization_bit / 8 + 2) / bw
    passes = 4 if train.gradient_checkpointing else 3  # forward, backward (~2 forwards), recompute
    overhead = spec.num_layers * passes * eff.layer_pass_overhead_s

    counts = count_params(spec)
    trainable = _trainable(spec, train, counts.total)
    comm_micro, comm_step = _comm_seconds(spec, train, setup, eff, trainable, counts.total)
    off_micro, off_step = _offload_seconds(train, setup, eff, trainable, counts.total)
    # Optimizer step on the GPU: AdamW reads param, grad, two moments and writes three (~28 B/param fp32).
    opt = 0.0
    if train.offload == "none" and not setup.gpu.is_cpu:
        local = trainable / (setup.world_size if train.deepspeed_stage >= 1 else 1)
        opt = local * 28 / ((setup.gpu.bandwidth_gbs or UNKNOWN_BANDWIDTH_GBS) * 1e9 * eff.bandwidth)

    micro = compute + dequant + overhead + comm_micro + off_micro
    step = ga * micro + opt + comm_step + off_step + eff.step_overhead_s
    real_tokens_step = setup.world_size * ga * b * real
    tokens_per_s = real_tokens_step / step
    model_per_token = model_f / (b * real) if real else 0.0  # rows of no real tokens: nothing learned
    mfu = tokens_per_s / setup.world_size * model_per_token / peak_flops(setup, train)

    epoch_s = total_s = None
    steps = None
    assumptions = [f"efficiency: {eff.source}"]
    if lengths is not None:
        kept = lengths.samples * train_share * lengths.mean_kept(train.cutoff_len)
        epoch_s = kept / tokens_per_s if tokens_per_s else 0.0
        steps = max(1, round(lengths.samples * train_share / (setup.world_size * ga * b))) if not packing else \
            max(1, round(kept / PACKING_EFFICIENCY / train.cutoff_len / (setup.world_size * ga * b)))
        if epochs:
            total_s = epoch_s * epochs
    if not setup.gpu.bf16_tflops and not setup.gpu.is_cpu:
        assumptions.append(f"{setup.gpu.name}: peak unknown, assumed {UNKNOWN_TFLOPS:g} TFLOP/s")
    breakdown = {"compute": ga * compute, "dequantize": ga * dequant, "overhead": ga * overhead + eff.step_overhead_s,
                 "communication": ga * comm_micro + comm_step, "offload": ga * off_micro + off_step,
                 "optimizer": opt}
    return Throughput(
        tokens_per_s=tokens_per_s, step_seconds=step, micro_step_seconds=micro,
        padding_efficiency=real / row_len if row_len else 1.0, flops_per_token=model_per_token, mfu=mfu,
        epoch_seconds=epoch_s, total_seconds=total_s, epochs=epochs, steps_per_epoch=steps,
        breakdown={k: v for k, v in breakdown.items() if v}, assumptions=tuple(assumptions),
    )


def _trainable(spec: ModelSpec, train: TrainConfig, total: int) -> int:
    if train.is_lora:
        return lora_adapter_params(spec, train)
    if train.finetuning_type == "freeze":
        counts = count_params(spec)
        layer_w = counts.total - counts.embeddings - counts.lm_head
        return int(layer_w * min(1.0, train.freeze_trainable_layers / spec.num_layers))
    return total
