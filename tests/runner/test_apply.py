"""`plan --apply` on the CPU: train a tiny model folder, report predicted vs measured, handle OOM and --out."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from apply_helpers import plan_dict, write_dataset, write_model  # noqa: E402
from rich.console import Console  # noqa: E402

from planner.errors import UserError  # noqa: E402
from planner.exports.plan_file import PlanFile  # noqa: E402
from runner.apply import apply_plan  # noqa: E402
from runner.runlog import read_runs  # noqa: E402


def _memory_model_ready() -> bool:
    if importlib.util.find_spec("planner.memory") is None:
        return False
    import planner.memory

    return hasattr(planner.memory, "estimate_memory")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return write_model(root / "model"), write_dataset(root / "data.json")


def _apply(plan, out, **kw) -> tuple[int, str]:
    buf = io.StringIO()
    rc = apply_plan(plan, out_dir=out, console=Console(file=buf, width=140), **kw)
    return rc, buf.getvalue()


@pytest.fixture(scope="module")
def first_run(tiny, tmp_path_factory):
    model, data = tiny
    root = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:  # module scope: the suite's per-test home is not set yet
        mp.setenv("VRAMPLAN_HOME", str(root / "home"))
        rc, text = _apply(plan_dict(model, data), root / "out", max_steps=2)
    return rc, text, root / "out"


def test_end_to_end_adapter_report_and_loss(first_run, tiny):
    rc, text, out = first_run
    assert rc == 0, text
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "adapter_config.json").is_file()
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert (out / "checkpoint-1").is_dir() and (out / "checkpoint-2").is_dir()
    assert (out / "plan.yaml").is_file()
    assert (out / "loss.png").stat().st_size > 1000
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok" and report["steps"] == 2
    m = report["measured"]
    assert set(m["phases"]) >= {"load", "forward", "backward", "optimizer"}
    assert m["categories"]["optimizer_state"] > 0 and m["categories"]["weights"] > 0
    assert sum(m["components"].values()) == sum(m["categories"].values()) == m["peak_tensor_bytes"]
    # The tiny model: 4-byte weights, LoRA adapters; the peak must hold the weights and stay small.
    from planner.model.params import count_params

    weights = count_params(PlanFile.from_dict(plan_dict(*tiny)).model_spec()).total * 4
    assert weights < m["peak_tensor_bytes"] < 20 * weights
    assert report["data"]["max_batch_shape"] == [2, 48]  # every sample runs past cutoff_len 48
    assert [p["step"] for p in report["loss"]["train"]] == [1, 2]
    stack = report["stack"]
    assert stack["torch"] and stack["transformers"] and stack["peft"] and stack["attn_implementation"] == "sdpa"
    assert "PYTORCH_CUDA_ALLOC_CONF" in stack
    assert "peak tensors" in text and "measured" in text
    if _memory_model_ready():
        # predicted and measured carry the same keys; the analytic model within 5% of the oracle
        assert set(report["predicted"]) <= set(report["measured"])
        err = report["error"]["peak_tensor_bytes"]
        assert abs(err) <= 0.05, (report["predicted"], m["peak_tensor_bytes"], report["notes"])
        assert set(report["error"]["phases"]) == {"load", "forward", "backward", "optimizer"}
        assert all(abs(e) <= 0.05 for e in report["error"]["phases"].values()), report["error"]
        assert abs(report["error"]["components"]["weights"]) <= 0.01
    else:
        assert report["predicted"] == {} and any("planner.memory" in n for n in report["notes"])
    logged = list(read_runs(out.parent / "home" / "runs.jsonl"))
    assert logged and logged[-1]["measured"]["peak_tensor_bytes"] == m["peak_tensor_bytes"]


def test_reapply_plan_yaml_repeats_the_run(first_run, tmp_path):
    _, _, out = first_run
    plan = PlanFile.load(out / "plan.yaml")
    assert plan.training["max_steps"] == 2 and plan.config.per_device_train_batch_size == 2
    assert Path(plan.data["data"][0]).is_absolute()
    rc, text = _apply(plan, tmp_path / "again")
    assert rc == 0, text
    a = json.loads((out / "report.json").read_text())["measured"]
    b = json.loads((tmp_path / "again" / "report.json").read_text())["measured"]
    assert a["peak_tensor_bytes"] == b["peak_tensor_bytes"]  # same plan, same seeds, same bytes
    assert PlanFile.load(tmp_path / "again" / "plan.yaml").to_dict() == plan.with_(where="x").to_dict()


def test_oom_is_reported_checkpoints_kept_and_retry_fits(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "out"
    rc, _ = _apply(plan_dict(model, data), out, max_steps=1)
    assert rc == 0
    first = json.loads((out / "report.json").read_text())["measured"]
    # A card between what loading needs and the step's peak: it loads, then runs out in a step.
    budget = first["phases"]["load"] + 0.75 * (first["peak_tensor_bytes"] - first["phases"]["load"])
    small = plan_dict(model, data, gpu=f"{budget / 2**30:.9f}GB")
    rc, text = _apply(small, out, max_steps=3, force=True)
    assert rc == 1
    assert "Out of memory" in text and "Traceback" not in text
    assert "checkpoint-1" in text and "halve the micro-batch" in text
    assert (out / "checkpoint-1" / "adapter_model.safetensors").is_file()  # progress kept
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "oom" and report["oom"]["step"] == 2
    assert report["oom"]["phase"] in ("forward", "backward", "optimizer")
    assert report["oom"]["measured_peak_bytes"] > budget
    assert PlanFile.load(out / "plan.next.yaml").config.per_device_train_batch_size == 1

    rc, text = _apply(small, out, max_steps=3, force=True, retry=True)
    assert rc == 0, text
    assert "retry 1" in text and "resuming from" in text
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok" and report["config"]["per_device_train_batch_size"] == 1
    assert report["config"]["gradient_accumulation_steps"] == 2
    assert report["measured"]["peak_tensor_bytes"] <= budget
    assert (out / "checkpoint-3").is_dir()


def test_non_empty_out_needs_force(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError) as err:
        apply_plan(plan_dict(model, data), out_dir=out, max_steps=1, console=Console(file=io.StringIO()))
    assert "--out" in err.value.message and "--force" in str(err.value)
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "plan.yaml").write_text("x")
    (exports / "llamafactory.yaml").write_text("x")
    from runner.apply import check_out_dir

    assert check_out_dir(exports, force=False) == "new"  # the plan's own exports are not a run
    with pytest.raises(UserError, match="not a folder"):
        apply_plan(plan_dict(model, data), out_dir=tmp_path / "file", console=Console(file=io.StringIO()))


def test_module_entry_exits_2_on_a_used_out_dir(tiny, tmp_path):
    model, data = tiny
    plan = PlanFile.from_dict(plan_dict(model, data)).save(tmp_path / "plan.yaml")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.json").write_text('{"status": "ok"}')
    proc = subprocess.run([sys.executable, "-m", "planner.cli.apply", "--plan", str(plan), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 2, proc.stderr
    assert "--out" in proc.stderr and "--force" in proc.stderr and "finished run" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_synthetic_random_init_eval_and_merge(tiny, tmp_path):
    model, _ = tiny
    plan = plan_dict(model, None, gradient_checkpointing=False)
    plan["training"]["eval_ratio"] = 0.25
    rc, text = _apply(plan, tmp_path / "out", max_steps=1, init="random", synthetic=(4, 16), merge=True)
    assert rc == 0, text
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["max_batch_shape"] == [2, 16]
    assert report["loss"]["eval"] and report["loss"]["train"]  # one of the 4 samples held out
    assert (tmp_path / "out" / "merged" / "model.safetensors").is_file()
    saved = PlanFile.load(tmp_path / "out" / "plan.yaml")
    assert saved.synthetic == (4, 16) and saved.training["init"] == "random"


@pytest.mark.parametrize("trainer", ["llamafactory", "peft"])
def test_qlora_applies_with_the_recipe_it_planned(tiny, tmp_path, trainer):
    """QLoRA on the CPU (bitsandbytes 4-bit) trains the recipe the plan names: LLaMA-Factory keeps the tied
    embedding in bf16, peft's prepare_model_for_kbit_training upcasts it to fp32; prediction within 2%."""
    from runner.build import cpu_4bit_available

    if not cpu_4bit_available():
        pytest.skip("4-bit on the CPU needs bitsandbytes >= 0.48")
    model, _ = tiny
    plan = plan_dict(model, None, dtype="bf16", quantization_bit=4, gradient_checkpointing=False, trainer=trainer)
    rc, text = _apply(plan, tmp_path / "out", max_steps=2, init="random", synthetic=(2, 32))
    assert rc == 0, text
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "ok"
    err = report["error"]
    assert abs(err["peak_tensor_bytes"]) <= 0.02, (report["predicted"], report["measured"])
    assert all(abs(e) <= 0.02 for e in err["phases"].values()), err
    assert abs(err["components"]["weights"]) <= 0.02, err
