"""The search's click options parse into the request's SearchOptions (search() keyword arguments)."""

from __future__ import annotations

import click
from click.testing import CliRunner

from planner.cli.request import search_options_of
from planner.cli.search_options import data_ref_from_params, search_options


def test_options_parse_into_search_kwargs():
    seen = {}

    @click.command()
    @click.option("--epochs", type=float)
    @search_options
    def cmd(**params):
        seen.update(params)

    result = CliRunner().invoke(cmd, ["--target-batch", "32", "--margin", "0.1", "--packing", "--group-by-length",
                                      "--epochs", "2", "--sweep", "--check", "train.yaml"])
    assert result.exit_code == 0, result.output
    assert search_options_of(seen).kwargs() == {"target_batch": 32, "margin": 0.1, "epochs": 2.0, "packing": True,
                                   "group_by_length": True}
    assert seen["sweep"] and seen["check"] == "train.yaml"
    bad = CliRunner().invoke(cmd, ["--margin", "0.9"])
    assert bad.exit_code == 2 and "--margin" in bad.output


def test_data_ref():
    assert data_ref_from_params({"data": ("a.json",), "template": None}) == {"data": ["a.json"]}
    assert data_ref_from_params({}) is None


def test_flags_named_in_messages_exist():
    """Every flag the search, the infeasible explanation and --check tell people to use is a real option."""
    import re
    from pathlib import Path

    from planner.cli import cli

    help_text = CliRunner().invoke(cli, ["--help"], terminal_width=200).output
    root = Path(__file__).parents[3] / "planner"
    sources = list((root / "search").glob("*.py"))  # the search, check, sweep and hparams
    named = set()
    for path in sources:
        named |= set(re.findall(r"(--[a-z][a-z0-9-]+)", path.read_text()))
    missing = sorted(f for f in named if f not in help_text)
    assert not missing, missing
