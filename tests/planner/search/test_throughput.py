"""Throughput model: FLOP counts by method, padding arithmetic, and the direction of every cost."""

from __future__ import annotations

import math

import pytest
from search_helpers import lengths, setup, spec

from planner.model.params import count_params
from planner.search.lengths import PACKING_EFFICIENCY, LengthProfile
from planner.search.throughput import estimate_throughput, flop_terms, step_flops
from planner.train_config import TrainConfig


def _per_token(cfg: TrainConfig, model="Qwen2.5-7B") -> tuple[float, float, float]:
    s = spec(model)
    terms = flop_terms(s, cfg)
    model_f, hw_f = step_flops(terms, cfg, rows=1, row_len=1, row_len_sq=1)  # attention negligible
    n = terms.layers / 2 + terms.head / 2  # matmul weights per token
    return model_f / n, hw_f / n, terms.adapter / 2


@pytest.mark.parametrize("cfg,model_mult,hw_mult", [
    (TrainConfig(finetuning_type="full", gradient_checkpointing=False), 6.0, 6.0),  # Kaplan: 6N
    (TrainConfig(finetuning_type="full", gradient_checkpointing=True), 6.0, 8.0),  # + recomputed forward
    (TrainConfig(finetuning_type="lora", gradient_checkpointing=False), 4.0, 4.0),  # no weight gradients
    (TrainConfig(finetuning_type="lora", gradient_checkpointing=True), 4.0, 6.0),
])
def test_flops_per_token_by_method(cfg, model_mult, hw_mult):
    m, h, adapter = _per_token(cfg)
    n = count_params(spec("Qwen2.5-7B")).total
    slack = 6 * adapter / n * model_mult + 0.02  # LoRA adapters add 6 x their weights
    assert m == pytest.approx(model_mult, rel=slack)
    assert h == pytest.approx(hw_mult, rel=slack)


def test_attention_term_grows_with_the_square_of_the_row():
    s, cfg = spec("Qwen2.5-7B"), TrainConfig(gradient_checkpointing=False)
    terms = flop_terms(s, cfg)
    short = step_flops(terms, cfg, 1, 1024, 1024**2)[0] / 1024
    long = step_flops(terms, cfg, 1, 8192, 8192**2)[0] / 8192
    # PaLM App. B: 6N + 12 L H Q T for full training; LoRA (4N) keeps the 3 x attention (fwd + 2 x bwd)
    extra = 3 * terms.attn_per_ctx / 2 * (8192 - 1024)
    assert long - short == pytest.approx(extra, rel=1e-9)


def test_length_profile_order_statistics():
    prof = LengthProfile.from_lengths(list(range(1, 101)))  # uniform 1..100
    assert prof.mean_kept(1000) == pytest.approx(50.5)
    assert prof.mean_kept(50) == pytest.approx((sum(range(1, 51)) + 50 * 50) / 100)
    assert prof.expected_max(1, 1000) == pytest.approx(50.5)
    # E[max of 2 uniform draws on 1..K] = sum_k k ((k/K)^2 - ((k-1)/K)^2)
    exact = sum(k * ((k / 100) ** 2 - ((k - 1) / 100) ** 2) for k in range(1, 101))
    assert prof.expected_max(2, 1000) == pytest.approx(exact)
    assert prof.expected_max(8, 60) <= 60


def test_padding_random_vs_grouped_vs_packed():
    prof = LengthProfile.from_lengths(lengths(20000))
    s, st = spec("Qwen2.5-1.5B"), setup("H100")
    cfg = TrainConfig(cutoff_len=4096, per_device_train_batch_size=8, gradient_accumulation_steps=2)
    rand = estimate_throughput(s, cfg, st, lengths=prof)
    grouped = estimate_throughput(s, cfg, st, lengths=prof, group_by_length=True)
    packed = estimate_throughput(s, cfg, st, lengths=prof, packing=True)
    single = estimate_throughput(s, cfg.with_(per_device_train_batch_size=1, gradient_accumulation_steps=16),
                                 st, lengths=prof)
    assert single.padding_efficiency == pytest.approx(1.0)
    assert rand.padding_efficiency < grouped.padding_efficiency <= 1.0
    assert packed.padding_efficiency == pytest.approx(PACKING_EFFICIENCY)
    assert grouped.tokens_per_s > rand.tokens_per_s


def test_every_cost_points_the_right_way():
    s, one, eight = spec("Qwen2.5-7B"), setup("H100"), setup("H100", 8)
    base = TrainConfig(cutoff_len=2048, per_device_train_batch_size=4, gradient_accumulation_steps=4,
                       gradient_checkpointing=False)
    t = lambda cfg, st=one: estimate_throughput(s, cfg, st).tokens_per_s  # noqa: E731
    assert t(base.with_(quantization_bit=4)) < t(base)  # dequantization
    assert t(base.with_(quantization_bit=8)) < t(base.with_(quantization_bit=4))  # int8 matmuls
    assert t(base.with_(gradient_checkpointing=True)) < t(base)  # recompute
    assert t(base.with_(finetuning_type="full")) < t(base)  # weight gradients
    assert t(base.with_(use_liger_kernel=True)) > t(base)
    assert t(base, eight) > 7 * t(base)  # data parallel scales (LoRA gradients are tiny)
    full = base.with_(finetuning_type="full", gradient_accumulation_steps=1)
    assert t(full.with_(deepspeed_stage=3), eight) < t(full.with_(deepspeed_stage=2), eight)  # weight gathers
    assert t(full.with_(deepspeed_stage=3, offload="params"), eight) < t(full.with_(deepspeed_stage=3), eight)
    two_nodes = setup("H100", 8, 2)
    assert t(full.with_(deepspeed_stage=3), two_nodes) < 2 * t(full.with_(deepspeed_stage=3), eight)


def test_epoch_time_is_tokens_over_speed():
    prof = LengthProfile.from_lengths(lengths(5000))
    s, st = spec("Qwen2.5-0.5B"), setup("RTX4090")
    cfg = TrainConfig(cutoff_len=1024, per_device_train_batch_size=2, gradient_accumulation_steps=8)
    tp = estimate_throughput(s, cfg, st, lengths=prof, epochs=3, train_share=0.95)
    kept = 5000 * 0.95 * prof.mean_kept(1024)
    assert tp.epoch_seconds == pytest.approx(kept / tp.tokens_per_s)
    assert tp.total_seconds == pytest.approx(3 * tp.epoch_seconds)
    assert tp.steps_per_epoch == round(5000 * 0.95 / 16)
    assert 0 < tp.mfu < 1 and math.isfinite(tp.flops_per_token)
