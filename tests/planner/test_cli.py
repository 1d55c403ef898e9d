"""The `plan` command: exit codes, JSON contract, errors without tracebacks, torch-free imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from planner.cli import cli

HEAVY = ("torch", "transformers", "peft", "deepspeed", "bitsandbytes", "accelerate")


def run(*args: str) -> tuple[int, str, str]:
    """Run `python -m planner ARGS` in a subprocess; returns (exit code, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_import_planner_pulls_in_no_torch():
    code = ("import sys, planner, planner.cli, planner.pipeline, planner.cli.render, planner.model.resolve, planner.hardware.gpus; "
            "import planner.model.params, planner.model.catalog, planner.hardware.catalog; "
            f"print(sorted(set({HEAVY!r}) & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plan_run_pulls_in_no_torch():
    code = ("import sys; from planner.cli import main\n"
            "try:\n    main(['--model', 'Qwen2.5-7B', '--gpu', 'RTX4090', '--format', 'json'])\n"
            "except SystemExit:\n    pass\n"
            f"print(sorted(set({HEAVY!r}) & set(sys.modules)), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stderr.strip().splitlines()[-1] == "[]"


def test_json_is_one_object_with_exact_params():
    code, out, err = run("--model", "Qwen2.5-7B", "--gpu", "RTX4090", "--format", "json", "--offline")
    assert code == 0, err
    obj = json.loads(out)
    assert obj["model"]["params_total"] == 7_615_616_512
    assert obj["gpu"]["name"].startswith("RTX-4090") or "4090" in obj["gpu"]["name"]
    assert obj["gpu"]["count"] == 1 and obj["gpu"]["nodes"] == 1


@pytest.mark.parametrize("name", ["Qwen2.5-7B", "qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", "QWEN2.5-7B"])
def test_model_names_resolve_to_the_same_architecture(name):
    from planner.model.catalog import find_model
    from planner.model.resolve import resolve_model

    spec, base = resolve_model(name), find_model("Qwen2.5-7B").spec
    assert (spec.model_type, spec.hidden_size, spec.num_layers, spec.vocab_size) == \
        (base.model_type, base.hidden_size, base.num_layers, base.vocab_size)


@pytest.mark.parametrize(("name", "hub_id", "noted"), [
    ("Qwen2.5-7B", "Qwen/Qwen2.5-7B", False),
    ("QWEN2.5-7B", "Qwen/Qwen2.5-7B", False),
    ("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", True),
    ("qwen/qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", True),
    ("Llama-2-7b-chat", "meta-llama/Llama-2-7b-chat-hf", True),
    ("qwen2.5_7b-chat", "Qwen/Qwen2.5-7B", True),  # fuzzy: the entry's own checkpoint, said so
    ("Qwen/Qwen2.5-7B-Chat", "Qwen/Qwen2.5-7B-Chat", True),  # fuzzy with an org: the name given
])
def test_model_name_given_is_the_checkpoint_planned(name, hub_id, noted):
    from planner.model.resolve import resolve_model_noted

    spec, note = resolve_model_noted(name)
    assert spec.hub_id == hub_id and spec.name == hub_id.rsplit("/", 1)[1]
    assert bool(note) == noted
    if noted:
        assert name in note and "Qwen2.5-7B" in note or "Llama-2-7b-hf" in note


def test_instruct_model_reaches_every_export_and_the_header(tmp_path):
    out = tmp_path / "o"
    code, stdout, err = run("--model", "Qwen2.5-7B-Instruct", "--gpu", "RTX4090", "--offline", "--out", str(out))
    assert code == 0, err
    assert "Qwen2.5-7B-Instruct  (qwen2" in stdout and "catalog architecture of Qwen2.5-7B" in stdout
    import yaml

    assert yaml.safe_load((out / "llamafactory.yaml").read_text())["model_name_or_path"] == "Qwen/Qwen2.5-7B-Instruct"
    assert yaml.safe_load((out / "axolotl.yaml").read_text())["base_model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert yaml.safe_load((out / "plan.yaml").read_text())["model"]["hub_id"] == "Qwen/Qwen2.5-7B-Instruct"
    for path in out.iterdir():
        assert "Qwen/Qwen2.5-7B\n" not in path.read_text() and "Qwen2.5-7B/" not in path.read_text()


def test_unknown_model_is_one_clear_error():
    code, out, err = run("--model", "Qwen2.5-7x", "--gpu", "4090")
    assert code == 2
    assert "Traceback" not in err and out == ""
    assert "--model Qwen2.5-7x" in err and "Qwen2.5-7B" in err


def test_unknown_gpu_names_the_flag():
    code, _, err = run("--model", "Qwen2.5-7B", "--gpu", "RTX9999")
    assert code == 2 and "--gpu RTX9999" in err and "Traceback" not in err


def test_bad_config_folder_names_file_and_line(tmp_path):
    (tmp_path / "config.json").write_text('{\n  "model_type": "llama",\n  "hidden_size": 64,,\n}')
    code, _, err = run("--model", str(tmp_path))
    assert code == 2
    assert f"{tmp_path / 'config.json'}:3" in err


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    code, _, err = run("--model", str(tmp_path))
    assert code == 2 and "model_type 'bert'" in err


def test_no_gpu_plans_for_the_default_card():
    code, out, err = run("--model", "Qwen2.5-0.5B", "--format", "json")
    assert code == 0
    obj = json.loads(out)
    if not obj["gpu"]["detected"]:
        assert "no GPU found" in err and "4090" in obj["gpu"]["name"]


def test_debug_shows_traceback():
    code, _, err = run("--model", "nope-model", "--debug")
    assert code != 0 and "Traceback" in err


def test_help_lists_the_main_flags():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for flag in ("--model", "--gpu", "--gpus", "--nodes", "--format"):
        assert flag in result.output


@pytest.mark.parametrize("cmd", [["models"], ["gpus"], ["models", "--format", "json"]])
def test_catalog_listings(cmd):
    code, out, err = run(*cmd)
    assert code == 0, err
    if "json" in cmd:
        assert len(json.loads(out)["models"]) >= 30
