"""The planner's token counts equal transformers' apply_chat_template(tokenize=True), for every format,
on the fast counting path (byte-level BPE) and the tokenizer's own path (Metaspace)."""

from __future__ import annotations

import json

import pytest
from data_helpers import spec_for, write_jsonl

from planner.data import DataRequest, analyze, encode_records
from planner.data.loaders import iter_samples, resolve_sources
from planner.errors import UserError

TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]

ALPACA = [
    {"instruction": "Translate to French.", "input": "good morning", "output": "bonjour"},
    {"instruction": "Say hi", "input": "", "output": "Hi there!  How are you?\n\n  Indented line."},
    {"instruction": "Summarize", "input": "细胞理论是生物科学的一个理论。", "output": "细胞构成生命。",
     "system": "You answer briefly.", "history": [["What is 2+2?", "4"], ["And 3*3?", " 9 "]]},
    {"instruction": "Long one", "input": "", "output": "word " * 700},
]
SHAREGPT = [
    {"conversations": [
        {"from": "human", "value": "What's the weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": json.dumps({"temp_c": 21, "sky": "clear"})},
        {"from": "gpt", "value": "It is 21 °C and clear in Paris."}],
     "tools": json.dumps(TOOLS)},
    {"conversations": [{"from": "system", "value": "Be terse."}, {"from": "human", "value": "Hi"},
                       {"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Bye"},
                       {"from": "gpt", "value": "Bye!"}]},
]
MESSAGES = [
    {"messages": [{"role": "system", "content": "You are a cat."}, {"role": "user", "content": "Meow?"},
                  {"role": "assistant", "content": "Meow. 😺"}]},
    {"messages": [{"role": "user", "content": "Weather?"},
                  {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                    "arguments": {"city": "Oslo"}}}]},
                  {"role": "tool", "content": "{\"temp_c\": -3}"},
                  {"role": "assistant", "content": "It is -3 °C."}],
     "tools": [{"type": "function", "function": TOOLS[0]}]},
]
TEXT = [{"text": "Pretraining text, plain.\nSecond line."}, {"text": "中文文本，用于预训练。"}, {"text": ""}]
DATASETS = {"alpaca": ALPACA, "sharegpt": SHAREGPT, "messages": MESSAGES, "text": TEXT}


def _reference(folder, samples) -> list[list[int]]:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    out = []
    for s in samples:
        if s.text is not None:
            out.append(tok(s.text + tok.eos_token, add_special_tokens=False)["input_ids"])
        else:
            enc = tok.apply_chat_template(list(s.messages), tools=s.tools, tokenize=True)
            out.append(list(enc["input_ids"] if hasattr(enc, "keys") else enc))
    return out


@pytest.mark.parametrize("folder_fixture", ["bpe_folder", "metaspace_folder"])
@pytest.mark.parametrize("fmt", sorted(DATASETS))
def test_counts_equal_transformers(fmt, folder_fixture, request, tmp_path):
    folder = request.getfixturevalue(folder_fixture)
    data = write_jsonl(tmp_path / f"{fmt}.jsonl", DATASETS[fmt])
    spec = spec_for(folder)
    samples = list(iter_samples(resolve_sources([str(data)])))
    expected = _reference(folder, samples)
    stats = analyze(DataRequest(data=(str(data),), use_cache=False, trainer="trl"), spec, progress=False)
    assert stats.tokenizer_exact and stats.tokenizer_source == "model folder"
    assert list(stats.lengths) == sorted(len(ids) for ids in expected)
    encoded = list(encode_records(DataRequest(data=(str(data),), trainer="trl"), spec))
    assert [e.input_ids for e in encoded] == expected
    trained = sum(1 for e in encoded for label in e.labels if label != -100)
    assert stats.response_tokens == trained
    assert stats.prompt_tokens + stats.response_tokens == stats.tokens_total


def test_labels_cover_assistant_turns_only(bpe_folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(bpe_folder))
    data = write_jsonl(tmp_path / "a.jsonl", [ALPACA[2]])
    (sample,) = encode_records(DataRequest(data=(str(data),)), spec_for(bpe_folder))
    trained = tok.decode([t for t in sample.labels if t != -100])
    assert trained == "4<|im_end|>\n 9 <|im_end|>\n细胞构成生命。<|im_end|>\n"
    assert "What is 2+2?" not in trained


def test_encode_records_truncates(bpe_folder, tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    out = list(encode_records(DataRequest(data=(str(data),), cutoff_len=64), spec_for(bpe_folder)))
    assert max(len(e.input_ids) for e in out) == 64
    assert all(len(e.input_ids) == len(e.labels) for e in out)


def test_fast_path_is_taken_and_agrees(bpe_folder):
    from planner.data.pipeline import prepare

    prep = prepare(spec_for(bpe_folder))
    prep.counter.tokenizer  # noqa: B018 - loads it
    assert prep.counter.fast is not None
    items = [prep.render(s) for s in iter_samples(resolve_sources(["demo"]))]
    assert [prep.counter.fast.count_one(t, s) for t, s in items] == prep.counter.count_slow(items)


def test_worker_process_gives_the_same_counts(bpe_folder, tmp_path, monkeypatch):
    import planner.data.analysis as analyze_module

    data = write_jsonl(tmp_path / "a.jsonl", ALPACA * 300)
    spec = spec_for(bpe_folder)
    local = analyze(DataRequest(data=(str(data),), use_cache=False), spec, progress=False)
    monkeypatch.setattr(analyze_module, "WORKER_MIN_BYTES", 0)
    monkeypatch.setattr(analyze_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(analyze_module, "BATCH", 64)
    forked = analyze(DataRequest(data=(str(data),), use_cache=False), spec, progress=False)
    assert list(forked.lengths) == list(local.lengths)
    assert forked.response_tokens == local.response_tokens


def test_workers_read_json_lines_blocks_themselves(bpe_folder, tmp_path, monkeypatch):
    """Blocks of lines (smaller than some lines here), a JSON array and JSON Lines saved as .json, mixed:
    the same lengths in the same order as one process, and errors name the right file:line."""
    import planner.data.analysis as analyze_module

    records = [dict(r, output=r["output"] * (1 + i % 7)) for i, r in enumerate(ALPACA * 40)]
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", records)
    (folder / "b.json").write_text(json.dumps(records[:50]))
    (folder / "c.json").write_text("\n".join(json.dumps(r) for r in records[:30]) + "\n\n")
    spec = spec_for(bpe_folder)
    request = DataRequest(data=(str(folder),), use_cache=False)
    local = analyze(request, spec, progress=False)
    monkeypatch.setattr(analyze_module, "WORKER_MIN_BYTES", 0)
    monkeypatch.setattr(analyze_module.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(analyze_module, "BLOCK_BYTES", 300)
    forked = analyze(request, spec, progress=False)
    assert local.samples == forked.samples == len(records) + 80
    assert list(forked.lengths) == list(local.lengths)
    assert (forked.prompt_tokens, forked.response_tokens) == (local.prompt_tokens, local.response_tokens)

    lines = (folder / "a.jsonl").read_text().splitlines()
    lines[len(lines) - 3] = lines[len(lines) - 3][:-1]  # a malformed record near the end, in a late block
    (folder / "a.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=rf"a\.jsonl:{len(lines) - 2}: malformed JSON"):
        analyze(request, spec, progress=False)
    write_jsonl(folder / "a.jsonl", records)
    array = json.dumps(records[:50], indent=1).splitlines()
    bad = max(i for i, text in enumerate(array) if text.strip().startswith('"output"'))  # in the last record
    array[bad] = array[bad].replace('": "', '": ', 1)
    (folder / "b.json").write_text("\n".join(array))
    with pytest.raises(UserError, match=rf"b\.json:{bad + 1}: malformed JSON"):
        analyze(request, spec, progress=False)


def test_fast_path_caches_stay_bounded_and_exact(bpe_folder, monkeypatch):
    from planner.data.fastcount import FastCounter
    from planner.data.pipeline import prepare

    monkeypatch.setattr(FastCounter, "CACHE_WORDS", 64)
    prep = prepare(spec_for(bpe_folder))
    prep.counter.tokenizer  # noqa: B018 - loads it
    fast = prep.counter.fast
    items = [prep.render(s) for s in iter_samples(resolve_sources(["demo"]))]
    assert [fast.count_one(t, s) for t, s in items] == prep.counter.count_slow(items)
    # a cache holds at most what one record adds on top of the limit
    assert max(len(fast.spaced), len(fast.pieces), len(fast.first), len(fast.short)) < 64 + 400
    assert len(fast.spaced) >= 16  # the first quarter is kept, not everything dropped
