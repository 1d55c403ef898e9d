"""Suite-wide settings: never touch the network, keep caches inside the test's tmp dirs."""

from __future__ import annotations

import os

import pytest

import runner  # noqa: F401 - hands the planner its torch side, as the command line does

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VRAMPLAN_CACHE", str(tmp_path_factory.getbasetemp() / "vramplan-cache"))
    monkeypatch.setenv("VRAMPLAN_HOME", str(tmp_path_factory.getbasetemp() / "vramplan-home"))
