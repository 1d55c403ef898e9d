"""Exit status is a contract: 0 only with a config that fits every budget (device peak within the margin,
host RAM per node), 1 when nothing fits (closest config + smallest changes), 2 for bad input. Host RAM is
one figure for the search and the final check."""

from __future__ import annotations

import io
import json
import time
from dataclasses import replace

import pytest
from rich.console import Console

from planner.hardware.catalog import load_gpus
from planner.hardware.gpu_spec import GpuSetup
from planner.hardware.gpus import parse_gpu, resolve_setup
from planner.hardware.host_memory import (
    GIB,
    PROCESS_HOST_BYTES,
    default_host_ram,
    host_budget_bytes,
    parse_size,
)
from planner.memory import estimate_memory, render_memory
from planner.model.catalog import load_models
from planner.pipeline import run_plan
from planner.request import PlanRequest
from planner.train_config import TrainConfig
from tests.planner.test_cli import run

GRID = ((1, 1), (8, 1), (8, 2))  # 1, 8 and 16 GPUs


def test_no_exit_0_plan_says_it_does_not_fit_over_the_whole_catalog_grid():
    """Every catalog model x every catalog card x 1/8/16 GPUs, through the same pipeline `plan` runs."""
    start, walked, bad = time.perf_counter(), 0, []
    for model in load_models():
        for card in load_gpus():
            for count, nodes in GRID:
                report = run_plan(PlanRequest(model=model.name, gpu=card.spec.name, gpus=count, nodes=nodes))
                walked += 1
                if report.exit_code != 0:
                    out = report.to_json()
                    assert "Recommended" not in json.dumps(out) and "infeasible" in out
                    continue
                mem = report.to_json()["memory"]
                if not mem["fits"] or mem["does_not_fit"] or not mem["host_fits"] or mem["peak_bytes"] > mem["limit_bytes"]:
                    bad.append((model.name, card.spec.name, count, nodes, mem["does_not_fit"]))
                    continue
                # the table's verdict for the risky ones (offload, or within 10% of the limit); rendering all
                # would triple the test's time and the verdict line comes from the same shortfalls()
                if report.plan.config.offload != "none" or mem["peak_bytes"] > 0.9 * mem["limit_bytes"]:
                    buf = io.StringIO()
                    render_memory(report.plan.memory, Console(file=buf, width=120))
                    if "Does not fit" in buf.getvalue():
                        bad.append((model.name, card.spec.name, count, nodes, buf.getvalue()))
    assert walked == len(load_models()) * len(load_gpus()) * len(GRID)
    assert bad == []
    print(f"walked {walked} plans in {time.perf_counter() - start:.1f} s")


def test_offload_plan_for_another_machine_fits_the_host_figure_it_states():
    # was: exit 0 "Recommended ... ZeRO-3 + offload params" and "Does not fit (host RAM): -43.53 GiB over"
    code, out, err = run("--model", "Mixtral-8x7B-v0.1", "--gpu", "H100", "--format", "json")
    doc = json.loads(out)
    assert code == 0, err
    assert doc["memory"]["fits"] and doc["memory"]["host_fits"]
    assert doc["memory"]["host_need_bytes"] <= doc["memory"]["host_budget_bytes"]
    assert "DGX H100" in doc["memory"]["host_source"]


def test_host_mem_too_small_for_the_offload_is_not_recommended():
    code, out, err = run("--model", "Mixtral-8x7B-v0.1", "--gpu", "H100", "--host-mem", "48G")
    assert code == 1
    assert "Recommended" not in out
    assert "Nothing fits" in out + err and "Closest" in out + err
    assert "--host-mem 48G" in out + err  # the host figure says where it comes from


def test_nothing_fits_exits_1_with_the_closest_config_and_changes():
    code, out, err = run("--model", "Qwen2.5-72B", "--gpu", "RTX4090", "--method", "full", "--zero", "0",
                         "--format", "json")
    assert code == 1
    doc = json.loads(out)
    assert "config" not in doc and doc["infeasible"]["closest"]["fits"] is False
    assert doc["exit_code"] == 1


def _between_limit_and_budget() -> int:
    """A cutoff at which Qwen2.5-7B LoRA (micro batch 1) on a 4090 fits the card but not the 5% margin."""
    from planner.hardware.calibration_use import choose_calibration
    from planner.model.resolve import resolve_model

    spec, setup = resolve_model("Qwen2.5-7B"), resolve_setup("RTX4090")
    estimate = choose_calibration(setup.gpu).estimator()  # the device model `plan` will use for this card
    for cutoff in range(512, 16384, 64):
        mem = replace(estimate(spec, TrainConfig(cutoff_len=cutoff), setup), margin=0.05)
        if mem.limit_bytes < mem.peak_bytes <= mem.budget_bytes:
            return cutoff
    raise AssertionError("no cutoff between the limit and the budget")


def test_fixed_below_the_margin_warns_and_exits_1_and_fits_with_margin_0():
    # the case ("Fits: 23.90 of 23.99 GiB, headroom 0.09 GiB" with no word about the margin), at the
    # cutoff where today's memory model puts the peak between the limit and the card
    # --margin 0.05 pinned: which calibration the card borrows (and so its margin) is another test's business
    args = ("--model", "Qwen2.5-7B", "--gpu", "RTX4090", "--fixed", "--cutoff", str(_between_limit_and_budget()),
            "--batch-size", "1")
    code, out, err = run(*args, "--margin", "0.05", "--format", "json")
    doc = json.loads(out)
    mem = doc["memory"]
    assert code == 1 and mem["fits"] is False and mem["fits_budget"] is True
    assert any("5% safety margin" in w for w in doc["warnings"]), doc.get("warnings")
    assert "5% safety margin" in err
    code0, out0, _ = run(*args, "--margin", "0", "--format", "json")
    assert code0 == 0 and json.loads(out0)["memory"]["fits"] is True
    code_t, out_t, _ = run(*args, "--margin", "0.05")  # the table says it too
    assert code_t == 1 and "safety margin" in out_t and "warning:" in out_t


@pytest.mark.parametrize("value,needle", [("abc", "not a memory size"), ("-5G", "not a memory size"),
                                          ("0", "not a memory size"), ("2G", "cannot hold")])
def test_bad_host_mem_exits_2_naming_the_flag(value, needle):
    code, out, err = run("--model", "Qwen2.5-7B", "--gpu", "H100", "--host-mem", value)
    assert code == 2 and out == ""
    assert f"--host-mem {value}" in err and needle in err and "Traceback" not in err


def test_host_mem_below_the_processes_of_8_gpus_exits_2():
    code, _, err = run("--model", "Qwen2.5-7B", "--gpu", "H100", "--gpus", "8", "--host-mem", "16G")
    assert code == 2 and "8 GPU process(es)" in err


@pytest.mark.parametrize("text,expected", [("512G", 512 * GIB), ("2TB", 2 << 40), ("1.5TiB", int(1.5 * (1 << 40))),
                                           ("768", 768 * GIB), ("64gib", 64 * GIB), ("4096M", 4 * GIB)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_host_figure_local_vs_another_machine(monkeypatch):
    import planner.hardware.gpus as g

    monkeypatch.setattr(g, "host_ram_bytes", lambda: 24 * GIB)
    monkeypatch.setattr(g, "inspect_gpus", lambda: [g.DetectedGpu(0, "NVIDIA H100 80GB HBM3", 80 * GIB, 79 * GIB,
                                                                  (9, 0), "550")])
    here = g.resolve_setup(None)  # this machine's cards: this machine's RAM
    assert here.host_ram_bytes == 24 * GIB and "this machine" in here.host_ram_source
    other = g.resolve_setup("H100", gpus=8)  # another machine: the card-class default
    assert other.host_ram_bytes is None
    assert default_host_ram(other.gpu, 8)[0] == 2048 * GIB
    given = g.resolve_setup("H100", gpus=8, host_mem="1T")
    assert given.host_ram_bytes == 1 << 40 and given.host_ram_source == "--host-mem 1T"
    assert g.resolve_setup("cpu").host_ram_bytes == 24 * GIB


def test_search_and_final_check_read_one_host_figure():
    from planner.model.resolve import resolve_model
    from planner.search.objective import Evaluator
    from planner.search.space import build_space

    spec = resolve_model("Qwen2.5-7B")
    for setup in (resolve_setup("H100", gpus=8), resolve_setup("RTX4090"),
                  replace(resolve_setup("H100"), host_ram_bytes=100 * GIB, host_ram_source="--host-mem 100G")):
        ev = Evaluator(spec, setup, build_space(spec, setup, None, pinned={}, target_batch=None), margin=0.05, lengths=None)
        mem = estimate_memory(spec, TrainConfig(deepspeed_stage=3, offload="optimizer", finetuning_type="full"), setup)
        assert ev.host_limit_bytes() == mem.host_budget_bytes == host_budget_bytes(setup)


def test_shortfalls_never_say_a_negative_over():
    from planner.model.resolve import resolve_model

    setup = GpuSetup(parse_gpu("H100"), host_ram_bytes=8 * GIB, host_ram_source="--host-mem 8G")
    spec_mem = estimate_memory(resolve_model("Qwen2.5-7B"),
                               TrainConfig(deepspeed_stage=3, offload="params", finetuning_type="full"), setup)
    assert spec_mem.fits_budget and not spec_mem.host_fits
    lines = spec_mem.shortfalls()
    assert len(lines) == 1 and lines[0].startswith("host RAM") and "-" not in lines[0].split("GiB over")[0]
    buf = io.StringIO()
    render_memory(spec_mem, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "Does not fit (host RAM" in text and " -" not in text.split("Does not fit")[1].split("\n")[0]
    assert "pinned by ZeRO offload" in text
    assert spec_mem.host_need_bytes == spec_mem.host_bytes + PROCESS_HOST_BYTES
