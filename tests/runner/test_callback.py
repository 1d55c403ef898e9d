"""VramplanCallback with a real transformers.Trainer on the CPU: per-phase peaks of the first steps, one line
in the run log in the `plan --apply` format, drift warned both ways."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainingArguments

from planner.hardware.calibration_fit import point_from_record
from runner.callback import DriftWarning, VramplanCallback, build_record, drift_warnings
from runner.runlog import read_runs

GIB = 1 << 30


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, length: int = 32, vocab: int = 256):
        g = torch.Generator().manual_seed(0)
        self.rows = [torch.randint(0, vocab, (length,), generator=g) for _ in range(n)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i].clone()}


def _train(tmp_path, callback, *, grad_accum: int = 1, max_steps: int = 4) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
    model = AutoModelForCausalLM.from_config(config)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2,
                             gradient_accumulation_steps=grad_accum, max_steps=max_steps, learning_rate=1e-3,
                             report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                             disable_tqdm=True, dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[callback]).train()


def test_first_steps_per_phase_in_the_run_log(tmp_path):
    log = tmp_path / "runs.jsonl"
    cb = VramplanCallback(steps=2, log_path=log, model_name="tiny-llama")
    _train(tmp_path, cb, grad_accum=2)
    rec = cb.record
    assert rec is not None and cb.logged_to == log
    m = rec["measured"]
    assert set(m["phases"]) == {"load", "forward", "backward", "optimizer"}
    assert m["peak_tensor_bytes"] == max(m["phases"].values()) > m["phases"]["load"] > 0
    assert m["steps_measured"] == 2 and [s["step"] for s in m["steps"]] == [1, 2]
    # two micro-batches per optimizer step, two steps measured, then the hooks are gone (4 steps trained)
    assert rec["data"] == {"micro_batches": 4, "max_batch_shape": [2, 32]}
    assert rec["model"]["name"] == "tiny-llama" and rec["model"]["hidden_size"] == 64
    assert rec["config"]["gradient_accumulation_steps"] == 2 and rec["gpu"]["device"]["name"] == "cpu"
    logged = list(read_runs(log))
    assert len(logged) == 1 and logged[0]["schema"] == 1 and logged[0]["measured"] == json.loads(json.dumps(m))


def test_drift_is_warned_both_ways_and_not_within_tolerance(tmp_path):
    first = VramplanCallback(steps=1, log_path=tmp_path / "a.jsonl")
    _train(tmp_path, first, max_steps=1)
    peak = first.record["measured"]["peak_tensor_bytes"]
    assert first.warnings == []  # nothing predicted: nothing to compare

    low = VramplanCallback(steps=1, predicted={"peak_tensor_bytes": peak // 2}, log_path=tmp_path / "b.jsonl")
    with pytest.warns(DriftWarning, match="may run out of memory"):
        _train(tmp_path, low, max_steps=1)
    assert low.record["error"]["peak_tensor_bytes"] == pytest.approx(-0.5, abs=0.01)

    high = VramplanCallback(steps=1, predicted={"peak_tensor_bytes": peak * 2}, log_path=tmp_path / "c.jsonl")
    with pytest.warns(DriftWarning, match="conservative"):
        _train(tmp_path, high, max_steps=1)

    close = VramplanCallback(steps=1, predicted={"peak_tensor_bytes": int(peak * 1.03)}, log_path=tmp_path / "d.jsonl")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DriftWarning)
        _train(tmp_path, close, max_steps=1)
    assert close.warnings == []


def test_prediction_from_a_plan_file(tmp_path):
    from planner.exports.plan_file import PlanFile
    from planner.hardware.gpus import resolve_setup
    from planner.model.resolve import resolve_model
    from planner.train_config import TrainConfig

    plan = PlanFile.from_values(resolve_model("Qwen2.5-0.5B"), TrainConfig(), resolve_setup("cpu"),
                                predicted={"peak_tensor_bytes": 123 * GIB, "peak_bytes": 124 * GIB})
    path = tmp_path / "plan.yaml"
    plan.save(path)
    cb = VramplanCallback(plan=path, steps=1)
    assert cb.predicted["peak_tensor_bytes"] == 123 * GIB


def test_a_cuda_record_feeds_plan_calibrate():
    """The record's shape on a GPU (CudaProbe's summary) is what calibration_fit reads from a run log."""

    class Args:
        per_device_train_batch_size, gradient_accumulation_steps, gradient_checkpointing = 4, 1, True
        bf16, fp16, optim, world_size = True, False, "adamw_torch_fused", 1

    model = torch.nn.Linear(2, 2)
    model.config = LlamaConfig(hidden_size=4096)
    measured = {"peak_tensor_bytes": 30 * GIB, "peak_reserved_bytes": 33 * GIB, "peak_device_bytes": 34 * GIB,
                "phases": {"forward": 20 * GIB}, "steps_measured": 3}
    rec = build_record(args=Args, model=model, measured=measured, batch_shapes=[(4, 2048)], device="cpu",
                       predicted={"peak_tensor_bytes": 29 * GIB, "peak_reserved_bytes": 31 * GIB,
                                  "peak_bytes": 32 * GIB, "phases": {"forward": 19 * GIB}})
    point = point_from_record(rec)
    assert point is not None and point.tokens == 4 * 2048 and point.hidden_size == 4096
    assert (point.allocated_bytes, point.reserved_bytes, point.device_bytes) == (30 * GIB, 33 * GIB, 34 * GIB)
    [w] = drift_warnings(rec, 0.05)  # device 34 GiB vs planned 32 GiB: the dangerous direction
    assert "device peak" in w and "may run out of memory" in w
