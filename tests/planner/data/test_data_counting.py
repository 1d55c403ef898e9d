"""Fast counting equals the tokenizer; the estimate works with no files; the cache; output; options."""

from __future__ import annotations

import json
import sys
import unicodedata

import click
import pytest
from click.testing import CliRunner
from data_helpers import MODEL_CONFIG, spec_for, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from planner.cli.data_options import data_options, data_request_from_options
from planner.data import DataRequest, analyze, render_data
from planner.data.encode import _response_tokens
from planner.data.estimate import EstimateCounter, load_profile
from planner.data.fastcount import _LAST_ASSIGNED_LN, FastCounter, _class, supports
from planner.errors import UserError
from planner.model.spec import ModelSpec

PIECES = [" ", "  ", "\n", "\n\n", "\t", "\r\n", "\xa0", "\u3000", "a", "Z", "the", "word", "1", "234", "中", "文",
          "。", "!", ".", "'s", "'LL", "-", "é", "e\u0301", "😀", "<|im_end|>", "<|im_start|>", "\x0b", "\x1c",
          "_", "ſ", "²", "Ⅻ", "ǅ"]


@pytest.fixture(scope="module")
def fast_and_tokenizer(bpe_folder):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bpe_folder / "tokenizer.json"))
    config = json.loads((bpe_folder / "tokenizer.json").read_text())
    assert supports(config)
    return FastCounter(config, tok.model), tok


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(PIECES), max_size=40), a=st.floats(0, 1), b=st.floats(0, 1))
def test_fast_count_equals_tokenizer(fast_and_tokenizer, parts, a, b):
    fast, tok = fast_and_tokenizer
    text = "".join(parts)
    lo, hi = sorted((round(a * len(text)), round(b * len(text))))
    spans = [(lo, hi)] if hi > lo else []
    enc = tok.encode(text, add_special_tokens=False)
    got = fast.count_one(text, spans)
    if got is not None:  # None: a span edge inside a piece, handed to the tokenizer
        assert got == (len(enc.ids), _response_tokens(enc, spans, len(text)))


def test_unicode_classes_match_categories():
    letters = set(_class("L").encode().decode())  # smoke: builds
    assert letters
    top = "".join(chr(c) for c in range(_LAST_ASSIGNED_LN + 1, sys.maxunicode + 1))
    assert not any(unicodedata.category(ch)[0] in "LN" for ch in top)
    for ch in "aZé中ǅ²Ⅻ١":
        assert (unicodedata.category(ch)[0] == "L") == ch.isalpha()


def test_estimate_without_any_file(tmp_path):
    spec = ModelSpec.from_config(MODEL_CONFIG, name="no-files")  # catalog-like: no folder, no hub id
    stats = analyze(DataRequest(data=("demo",)), spec, progress=False)
    assert not stats.tokenizer_exact and stats.tokenizer_source == "estimate"
    j = stats.to_json()
    assert j["tokenizer"]["exact"] is False and "estimate_error" in j["tokenizer"]
    assert any("estimate" in w for w in stats.warnings)
    assert stats.samples > 100 and stats.cutoff_len % 64 == 0


def test_estimate_profile_has_measured_errors():
    families = load_profile()["families"]
    assert "qwen" in families
    for entry in families.values():
        assert set(entry["coefficients"]) >= {"words", "letters", "cjk"}
    counter = EstimateCounter.for_model("qwen2")
    ((total, response),) = counter.count([("<|im_start|>user\nhello world<|im_end|>\n", [(20, 31)])])
    assert total >= 4 and 0 < response <= total


def test_cache_reuses_and_invalidates(bpe_folder, tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", [{"text": "hello world"}] * 10)
    spec = spec_for(bpe_folder)
    first = analyze(DataRequest(data=(str(data),)), spec, progress=False)
    again = analyze(DataRequest(data=(str(data),)), spec, progress=False)
    assert not first.cached and again.cached and list(again.lengths) == list(first.lengths)
    write_jsonl(data, [{"text": "hello world, longer now"}] * 10)
    changed = analyze(DataRequest(data=(str(data),)), spec, progress=False)
    assert not changed.cached and changed.lengths[0] > first.lengths[0]
    other = analyze(DataRequest(data=(str(data),), template="default"), spec, progress=False)
    assert not other.cached or list(other.lengths) == list(changed.lengths)  # text data ignores templates


def test_a_damaged_cache_entry_is_recounted(bpe_folder, tmp_path, monkeypatch):
    from planner.data import cache

    monkeypatch.setenv("VRAMPLAN_CACHE", str(tmp_path / "cache"))  # this test's entry alone
    data = write_jsonl(tmp_path / "a.jsonl", [{"text": "hello world " * (i + 1)} for i in range(10)])
    spec = spec_for(bpe_folder)
    first = analyze(DataRequest(data=(str(data),)), spec, progress=False)
    (entry,) = (cache.cache_dir() / "lengths").glob("*.bin")
    blob = bytearray(entry.read_bytes())
    blob[-3] ^= 0x40  # one flipped bit in the largest length
    entry.write_bytes(bytes(blob))
    again = analyze(DataRequest(data=(str(data),)), spec, progress=False)
    assert not again.cached and list(again.lengths) == list(first.lengths)
    assert again.tokens_total == again.prompt_tokens + again.response_tokens == first.tokens_total


def test_render_and_plot(bpe_folder, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "lengths.png"
    stats = analyze(DataRequest(data=("demo",), plot=str(png)), spec_for(bpe_folder), progress=False)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = Console(record=True, width=120)
    render_data(stats, console)
    out = console.export_text()
    assert f"cutoff_len {stats.cutoff_len:,}" in out and "Length histogram" in out and "(exact)" in out


def test_plot_without_matplotlib(bpe_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError, match="needs matplotlib"):
        analyze(DataRequest(data=("demo",), plot=str(tmp_path / "x.png")), spec_for(bpe_folder), progress=False)


def test_click_options_make_a_request(bpe_folder):
    seen = {}

    @click.command()
    @data_options
    def cmd(**opts):
        seen["req"] = data_request_from_options(opts)

    result = CliRunner().invoke(cmd, ["--data", "demo", "--data", "x.json", "--percentile", "0.95",
                                      "--sample", "10", "--no-cache", "--template", "chatml"])
    assert result.exit_code == 0, result.output
    req = seen["req"]
    assert req.data == ("demo", "x.json") and req.percentile == 0.95 and req.sample == 10
    assert not req.use_cache and req.template == "chatml"
    CliRunner().invoke(cmd, [])
    assert seen["req"] is None


def test_bad_percentile_and_template(bpe_folder):
    with pytest.raises(UserError, match="--percentile"):
        DataRequest(data=("demo",), percentile=1.5)
    with pytest.raises(UserError, match="not a template vramplan or LLaMA-Factory knows"):
        analyze(DataRequest(data=("demo",), template="nope"), spec_for(bpe_folder), progress=False)


def test_tokenizer_from_hub_cache_then_estimate(bpe_folder, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import constants

    from planner.data.tokenizer_files import resolve_tokenizer

    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bpe_folder / name, snapshot / name)
    (tmp_path / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = ModelSpec.from_config(MODEL_CONFIG, name="tiny", hub_id="org/tiny")
    files = resolve_tokenizer(None, spec)
    assert files.source == "hub cache" and files.exact and files.chat_template
    missing = resolve_tokenizer(None, ModelSpec.from_config(MODEL_CONFIG, name="x", hub_id="org/absent"))
    assert not missing.exact and "HF_HUB_OFFLINE" in missing.note
    assert resolve_tokenizer(str(bpe_folder / "tokenizer.json"), missing).source == "--tokenizer"
    with pytest.raises(UserError, match="no tokenizer.json"):
        resolve_tokenizer(str(tmp_path), spec)
