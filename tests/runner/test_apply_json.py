"""`plan --apply --format json|yaml`: stdout is one document (the plan and the run's report); the rest on stderr."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from apply_helpers import write_model  # noqa: E402

NOISE = ("gemm_4bit_forward", "publisher trust check", "Setting accelerator to CPU", "is_gradient_checkpointing")


def plan(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "planner", *args], capture_output=True, text=True, timeout=600,
                          cwd=cwd)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("tiny") / "model")


def test_apply_json_is_one_object_with_the_run(model_dir, tmp_path):
    proc = plan("--model", str(model_dir), "--gpu", "cpu", "--apply", "--init", "random", "--synthetic-data",
                "4:32", "--max-steps", "1", "--out", str(tmp_path / "run"), "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)  # raises on anything but exactly one JSON document
    assert obj["config"]["finetuning_type"] and obj["memory"]["peak_bytes"] > 0
    assert obj["run"]["status"] == "ok" and obj["run"]["measured"]["peak_tensor_bytes"] > 0
    assert "predicted" in proc.stderr and "done" in proc.stderr  # the table went to stderr
    for noise in NOISE:
        assert noise not in proc.stderr + proc.stdout, noise

    # re-applying the saved plan as YAML: one document too
    import yaml

    proc = plan("--apply", str(tmp_path / "run" / "plan.yaml"), "--out", str(tmp_path / "again"),
                "--format", "yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert len(docs) == 1 and docs[0]["run"]["status"] == "ok"


def test_known_noise_is_filtered_and_only_that(monkeypatch):
    from runner.noise import quiet_known_noise

    monkeypatch.delenv("VRAMPLAN_DEBUG", raising=False)
    quiet_known_noise()
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")

    def passes(logger, msg: str) -> bool:
        return all(f.filter(logging.LogRecord(logger.name, logging.WARNING, "", 0, msg, (), None))
                   for f in logger.filters)

    assert not passes(bnb, "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please")
    assert passes(bnb, "Failed to load CPU-only bitsandbytes library")
    assert not passes(logging.getLogger("DeepSpeed"), "Setting accelerator to CPU. If you have GPU ...")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_known_noise()
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                      stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
