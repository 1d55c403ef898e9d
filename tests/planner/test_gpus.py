"""`--gpu` parsing, GPU setups and NVML fallbacks."""

from __future__ import annotations

import pytest

from planner.errors import UserError
from planner.hardware.gpus import GIB, parse_gpu, resolve_setup


@pytest.mark.parametrize("text,expect", [
    ("H100-80G", "H100"), ("H100", "H100"), ("RTX4090", "4090"), ("4090", "4090"), ("rtx 4090", "4090"),
    ("A100-80G", "A100"), ("a100 80gb", "A100"), ("L40S", "L40S"), ("T4", "T4"),
])
def test_catalog_names(text, expect):
    spec = parse_gpu(text)
    assert expect.lower() in spec.name.lower()
    assert spec.memory_bytes > 10 * GIB


def test_a100_sizes_differ():
    assert parse_gpu("A100-80G").memory_bytes > parse_gpu("A100-40G").memory_bytes


@pytest.mark.parametrize("text,gib", [("24GB", 24), ("24G", 24), ("80 GiB", 80), ("12.5gb", 12.5)])
def test_sizes(text, gib):
    assert parse_gpu(text).memory_bytes == int(gib * GIB)


def test_cpu_has_no_device_overheads_marker():
    spec = parse_gpu("cpu")
    assert spec.is_cpu and spec.memory_bytes > 0


def test_unknown_card():
    with pytest.raises(UserError, match="--gpu"):
        parse_gpu("GTX-286")


def test_setup_world_size():
    setup = resolve_setup("H100", gpus=8, nodes=2)
    assert setup.world_size == 16 and not setup.detected


@pytest.mark.parametrize("kw", [dict(gpus=0), dict(nodes=0)])
def test_bad_counts(kw):
    with pytest.raises(UserError):
        resolve_setup("H100", **kw)


def test_no_nvml_uses_default(monkeypatch):
    import planner.hardware.gpus as g

    monkeypatch.setattr(g, "inspect_gpus", lambda: [])
    setup = g.resolve_setup(None)
    assert not setup.detected and "no GPU found" in setup.note


def test_detected_card_is_matched_to_catalog(monkeypatch):
    import planner.hardware.gpus as g

    fake = g.DetectedGpu(0, "NVIDIA H100 80GB HBM3", 85_520_809_984, 84 * GIB, (9, 0), "570.1")
    monkeypatch.setattr(g, "inspect_gpus", lambda: [fake, fake])
    setup = g.resolve_setup(None)
    assert setup.detected and setup.count == 2 and setup.gpu.bf16_tflops > 500
    assert setup.gpu.memory_bytes == fake.total_bytes


def test_detected_unknown_card(monkeypatch):
    import planner.hardware.gpus as g

    fake = g.DetectedGpu(0, "NVIDIA Mystery 7", 12 * GIB, 11 * GIB, (7, 5), "570.1")
    monkeypatch.setattr(g, "inspect_gpus", lambda: [fake])
    setup = g.resolve_setup(None)
    assert setup.gpu.name == "NVIDIA Mystery 7" and not setup.gpu.bf16


@pytest.mark.parametrize("text", ["8xH100", "8 x H100", "8×H100", "H100:8", "H100*8", "8*H100"])
def test_count_written_into_gpu(text):
    setup = resolve_setup(text)
    assert setup.count == 8 and "H100" in setup.gpu.name


def test_count_in_gpu_and_gpus_must_agree():
    assert resolve_setup("H100:8", gpus=8).count == 8
    with pytest.raises(UserError, match=r"--gpu 8xH100 says 8 GPUs, --gpus says 4"):
        resolve_setup("8xH100", gpus=4)


@pytest.mark.parametrize("text", ["RTX6000x", "A100-80G", "4090"])
def test_card_names_are_not_read_as_counts(text):
    try:
        setup = resolve_setup(text)
    except UserError as exc:
        assert "unknown card" in exc.message
    else:
        assert setup.count == 1


def test_absurd_sizes_and_counts_are_said():
    assert "largest card in the catalog" in resolve_setup("100000GB").note
    assert "--nodes" in resolve_setup("H100", gpus=100000).note
    assert resolve_setup("H100", gpus=8).note is None and resolve_setup("80GB").note is None
