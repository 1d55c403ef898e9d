"""End-to-end flows of `plan` through the real entry point: search, --fixed, data, exports, check, sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def plan(*args: str, cwd=None) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


def plan_json(*args: str) -> tuple[int, dict]:
    code, out, err = plan(*args, "--format", "json")
    assert "Traceback" not in err, err
    return code, json.loads(out)


def test_search_plan_has_config_memory_throughput():
    code, obj = plan_json("--model", "Qwen2.5-7B", "--gpu", "RTX4090")
    assert code == 0
    cfg, mem = obj["config"], obj["memory"]
    for key in ("finetuning_type", "cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps",
                "lora_rank", "lora_alpha", "deepspeed_stage", "learning_rate"):
        assert key in cfg
    assert mem["fits"] and mem["peak_bytes"] <= mem["budget_bytes"]
    assert set(mem["phases"]) >= {"forward", "backward", "optimizer"}
    assert mem["peak_tensor_bytes"] == max(mem["phases"].values())
    assert obj["throughput"]["tokens_per_s"] > 0  # no data: no dataset size, so no total time
    # LoRA trains a small fraction of the model
    assert 0 < obj["model"]["params_trainable"] < obj["model"]["params_total"] // 20


def test_fixed_config_is_evaluated_as_given():
    code, obj = plan_json("--model", "Qwen2.5-7B", "--method", "lora", "--cutoff", "4096", "--batch-size", "1",
                          "--gpu", "RTX4090", "--fixed")
    assert obj["config"]["cutoff_len"] == 4096 and obj["config"]["per_device_train_batch_size"] == 1
    comps = obj["memory"]["components"]
    assert 0 <= comps["weights"] - 7_615_616_512 * 2 < 4096  # bf16 base (+ the rotary buffers)
    assert code == (0 if obj["memory"]["fits"] else 1)


def test_fixed_full_on_a_small_card_does_not_fit():
    code, obj = plan_json("--model", "Qwen2.5-7B", "--method", "full", "--gpu", "RTX4090", "--fixed")
    assert code == 1 and not obj["memory"]["fits"]


def test_bad_flag_combination_names_the_flags():
    code, _, err = plan("--model", "Qwen2.5-7B", "--method", "full", "--quant", "4", "--gpu", "4090")
    assert code == 2 and "--quant" in err and "Traceback" not in err


def test_infeasible_explains_itself():
    code, out, err = plan("--model", "Qwen2.5-72B", "--method", "full", "--gpu", "RTX4090")
    assert code == 1 and "Traceback" not in err
    assert "--gpus" in out or "4-bit" in out or "--gpus" in err


def test_demo_data_sets_the_cutoff():
    code, obj = plan_json("--model", "Qwen2.5-0.5B", "--data", "demo", "--gpu", "A100-80G")
    assert code == 0
    data = obj["data"]
    assert data["samples"] > 100 and data["tokens_total"] > 0
    assert data["length"]["p95"] <= data["cutoff_len"] or data["cutoff_len"] >= data["length"]["p98"]
    assert data["cutoff_len"] % 64 == 0
    assert obj["config"]["cutoff_len"] <= data["cutoff_len"]
    assert obj["throughput"]["total_seconds"] > 0  # with data the run length is known


def test_out_writes_exports_and_never_overwrites(tmp_path):
    out = tmp_path / "run"
    code, _, err = plan("--model", "Qwen2.5-7B", "--gpu", "RTX4090", "--out", str(out))
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert {"plan.yaml", "llamafactory.yaml", "axolotl.yaml", "launch.sh", "training_arguments.json"} <= names
    before = (out / "plan.yaml").read_text()
    code, _, err = plan("--model", "Qwen2.5-7B", "--gpu", "H100", "--out", str(out))
    assert code == 2 and "--force" in err
    assert (out / "plan.yaml").read_text() == before
    code, _, _ = plan("--model", "Qwen2.5-7B", "--gpu", "H100", "--out", str(out), "--force")
    assert code == 0 and (out / "plan.yaml").read_text() != before
    # the exported LLaMA-Factory file checks back in
    code, out_text, err = plan("--check", str(out / "llamafactory.yaml"), "--gpu", "H100")
    assert code == 0, err


def test_sweep_lists_cards_and_counts():
    code, obj = plan_json("--model", "Qwen2.5-7B", "--sweep")
    assert code == 0
    rows = obj["sweep"]["rows"]
    assert len({r["count"] for r in rows}) >= 3 and len({r["card"] for r in rows}) >= 4


@pytest.mark.parametrize("fmt", ["table", "yaml"])
def test_other_formats(fmt):
    code, out, err = plan("--model", "Qwen2.5-1.5B", "--gpu", "L4", "--format", fmt)
    assert code == 0 and out.strip(), err
    if fmt == "yaml":
        import yaml

        assert yaml.safe_load(out)["model"]["name"] == "Qwen2.5-1.5B"


def test_calibrate_without_a_log_is_a_clear_error(tmp_path):
    code, _, err = plan("calibrate", "--from-log", str(tmp_path / "none.jsonl"))
    assert code == 2 and "none.jsonl" in err and "Traceback" not in err


def test_simulate_agrees_with_the_analytic_model():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    code, obj = plan_json("--model", "Qwen2.5-0.5B", "--gpu", "A100-80G", "--method", "lora", "--no-liger",
                          "--cutoff", "256", "--batch-size", "1", "--fixed", "--simulate")
    assert code == 0
    sim, mem = obj["simulation"], obj["memory"]
    assert sim["ok"], sim
    assert abs(sim["peak_tensor_bytes"] - mem["peak_tensor_bytes"]) <= 0.03 * sim["peak_tensor_bytes"]


def test_simulate_on_a_plan_with_liger_traces_and_says_what():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from rich.console import Console

    from planner.cli.request import request_from_options
    from planner.cli.simulate import simulate_stage
    from planner.pipeline import run_plan

    tiny = str(Path(__file__).resolve().parents[2] / "profiles" / "tiny")  # a Qwen2 shape Liger supports
    options = {"cutoff": 256, "batch_size": 1, "simulate": True, "fmt": "table"}
    report = run_plan(request_from_options(options, model=tiny, gpu="A100-80G"))
    simulate_stage(report.model, report)
    if not report.train.use_liger_kernel:
        pytest.skip("liger-kernel is not installed: the plan does not choose it")
    sim = report.to_json()["simulation"]
    assert sim["ok"], sim  # traced, not skipped
    assert "without Liger Kernel" in sim["traced_instead"] and sim["traced_config"]["use_liger_kernel"] is False
    assert abs(sim["peak_tensor_bytes"] - sim["analytic_peak_tensor_bytes"]) <= 0.03 * sim["peak_tensor_bytes"]
    console = Console(record=True, width=200)
    report.sections["simulation"].render(console)
    text = console.export_text()
    assert text.index("--simulate traced the planned config without Liger") < text.index("Fake-tensor simulation")

def test_cutoff_beyond_the_context_is_warned():
    code, obj = plan_json("--model", "Llama-2-7b-hf", "--gpu", "H100", "--cutoff", "16384", "--offline")
    assert code in (0, 1)
    assert any("--cutoff 16384 is beyond" in n and "4,096" in n and "rope_scaling" in n for n in obj["notes"])
    code, obj = plan_json("--model", "Llama-2-7b-hf", "--gpu", "H100", "--cutoff", "4096", "--offline")
    assert not any("beyond" in n for n in obj.get("notes", []))


@pytest.mark.parametrize("flag", [("--percentile", "0.9"), ("--sample", "100"), ("--plot", "x.png")])
def test_data_flags_without_data_are_errors(flag):
    code, out, err = plan("--model", "Qwen2.5-7B", "--gpu", "H100", "--offline", *flag)
    assert code == 2 and f"{flag[0]} needs --data" in err and "Traceback" not in err


def test_a_tokenizer_that_gives_no_tokens_is_a_clear_error(tmp_path):
    from tokenizers import Tokenizer, models

    folder = tmp_path / "tok"
    folder.mkdir()
    Tokenizer(models.BPE(vocab={}, merges=[])).save(str(folder / "tokenizer.json"))  # drops every character
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    data = tmp_path / "t.jsonl"
    data.write_text('{"text": "hello there"}\n{"text": "more words"}\n')
    code, out, err = plan("--model", "Qwen2.5-0.5B", "--gpu", "RTX4090", "--offline", "--data", str(data),
                          "--tokenizer", str(folder))
    assert code == 2 and "0 tokens" in err and "ZeroDivisionError" not in err and "internal error" not in err


@pytest.mark.parametrize(("flags", "drop"), [
    (("--batch-size", "100000"), "drop --batch-size"),
    (("--lora-rank", "10000000"), "drop --lora-rank"),
])
def test_an_absurd_pin_points_to_unpinning_it(flags, drop):
    code, out, err = plan("--model", "Qwen2.5-7B", "--gpu", "RTX4090", "--offline", *flags)
    assert code != 0
    assert drop in out + err and "try a smaller model" not in out + err
