"""Hyper-parameter rules and their reasons."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from search_helpers import setup, spec

from planner.search.hparams import choose_hparams, epochs_for, learning_rate_for, lora_rank_for, val_size_for
from planner.train_config import TrainConfig


def _data(samples: int, tokens: int):
    return SimpleNamespace(samples=samples, tokens_total=tokens)


@pytest.mark.parametrize("method,batch,expect", [
    ("lora", 16, 1e-4), ("lora", 64, 2e-4), ("lora", 4, 5e-5), ("qlora", 16, 2e-4), ("full", 32, 1e-5),
    ("full", 128, 2e-5),
])
def test_learning_rate_sqrt_scaling(method, batch, expect):
    lr, why = learning_rate_for(spec("Qwen2.5-7B"), method, batch)
    assert lr == pytest.approx(expect, rel=0.01)
    ref = {"lora": 16, "qlora": 16, "full": 32}[method]
    assert ("sqrt-scaled" in why) == (batch != ref)


def test_qlora_big_models_use_the_lower_rate():
    assert learning_rate_for(spec("Qwen2.5-72B"), "qlora", 16)[0] == pytest.approx(1e-4)


@pytest.mark.parametrize("samples,epochs", [(500, 3.0), (9_999, 3.0), (50_000, 2.0), (500_000, 1.0)])
def test_epochs_by_dataset_size(samples, epochs):
    assert epochs_for(_data(samples, samples * 300), None)[0] == epochs
    assert epochs_for(_data(samples, samples * 300), 5)[0] == 5.0


def test_rank_and_validation_split():
    assert lora_rank_for(None)[0] == 16
    assert lora_rank_for(_data(1000, 300_000))[0] == 8
    assert lora_rank_for(_data(10**6, 10**9))[0] == 64
    assert val_size_for(_data(500, 10**5))[0] == 0.0
    assert val_size_for(_data(20_000, 10**7))[0] == 0.05
    assert val_size_for(_data(1_000_000, 10**9))[0] * 1_000_000 <= 2000


def test_precision_follows_the_card():
    cfg = TrainConfig(dtype="bf16")
    assert choose_hparams(spec("Qwen2.5-7B"), cfg, None, setup=setup("H100"), effective_batch=16).bf16
    hp = choose_hparams(spec("Qwen2.5-7B"), TrainConfig(dtype="fp16"), None, setup=setup("T4"), effective_batch=16)
    assert hp.fp16 and not hp.bf16 and "bf16" in hp.why["precision"]
    full = TrainConfig(finetuning_type="full", dtype="fp32", amp="bf16")
    assert choose_hparams(spec("Qwen2.5-0.5B"), full, None, setup=setup("H100"), effective_batch=32).bf16


def test_warmup_from_total_steps():
    hp = choose_hparams(spec("Qwen2.5-7B"), TrainConfig(), _data(5000, 10**6), setup=setup("H100"),
                        effective_batch=16, steps_per_epoch=313)
    assert hp.total_steps == 939 and hp.warmup_steps == 29
    assert all(hp.why[k] for k in ("learning_rate", "num_train_epochs", "warmup_steps", "lora_rank", "val_size"))
