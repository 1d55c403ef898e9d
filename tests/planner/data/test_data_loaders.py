"""Loaders: formats, file types, dataset_info.json, globs and folders, sampling; bad input names file:line."""

from __future__ import annotations

import csv
import json

import pytest
from data_helpers import write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.data.formats import FormatSpec, to_sample
from planner.data.loaders import Scan, demo_path, iter_samples, resolve_sources
from planner.errors import UserError


def _samples(*data, **kw):
    return list(iter_samples(resolve_sources(list(data), **kw)))


def test_alpaca_user_turn_joins_instruction_and_input(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Translate", "input": "hello", "output": "bonjour", "system": "S",
         "history": [["q1", "a1"]]},
        {"instruction": "Just this", "input": "", "output": "ok"}])
    first, second = _samples(str(f))
    assert [m["role"] for m in first.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert first.messages[3]["content"] == "Translate\nhello"
    assert second.messages[0]["content"] == "Just this"
    assert (first.file, first.line, second.line) == (str(f), 1, 2)


def test_sharegpt_function_call_and_tools(tmp_path):
    tools = [{"name": "f", "parameters": {"type": "object", "properties": {}}}]
    f = tmp_path / "s.json"
    f.write_text(json.dumps([{"conversations": [
        {"from": "human", "value": "call f"},
        {"from": "function_call", "value": "{\"name\": \"f\", \"arguments\": {\"x\": 1}}"},
        {"from": "observation", "value": "42"},
        {"from": "gpt", "value": "it is 42"}], "tools": json.dumps(tools)}], indent=2))
    (s,) = _samples(str(f))
    assert [m["role"] for m in s.messages] == ["user", "assistant", "tool", "assistant"]
    assert s.messages[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": {"x": 1}}
    assert s.tools == [{"type": "function", "function": tools[0]}]
    assert s.line == 2  # the line where the record's "{" is


def test_messages_and_text_formats(tmp_path):
    m = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                        {"role": "assistant", "content": "b"}]}])
    t = write_jsonl(tmp_path / "t.jsonl", [{"text": "plain"}])
    (ms,), (ts,) = _samples(str(m)), _samples(str(t))
    assert ms.messages[1] == {"role": "assistant", "content": "b"}
    assert ts.text == "plain" and ts.messages == ()


def test_csv_parquet_txt_glob_and_folder(tmp_path):
    with open(tmp_path / "a.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
        w.writeheader()
        w.writerow({"instruction": "q, with comma", "input": "", "output": "multi\nline"})
    (tmp_path / "b.txt").write_text("line one\n\nline two\n", encoding="utf-8")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"instruction": ["p"], "input": [""], "output": ["o"]}), tmp_path / "c.parquet")
    csv_s, = _samples(str(tmp_path / "a.csv"))
    assert csv_s.messages[1]["content"] == "multi\nline" and csv_s.line == 3
    assert [s.text for s in _samples(str(tmp_path / "b.txt"))] == ["line one", "line two"]
    assert len(_samples(str(tmp_path / "*.csv"))) == 1
    assert len(_samples(str(tmp_path))) == 4  # folder: csv + 2 txt lines + parquet


def test_dataset_info_columns_tags_and_pretraining(tmp_path):
    write_jsonl(tmp_path / "chat.jsonl", [{"dialog": [{"speaker": "me", "text": "hi"},
                                                      {"speaker": "bot", "text": "hello"}], "sys": "S"}])
    write_jsonl(tmp_path / "c4.jsonl", [{"text": "raw"}])
    write_jsonl(tmp_path / "qa.jsonl", [{"q": "Q", "a": "A"}])
    info = {
        "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt",
                 "columns": {"messages": "dialog", "system": "sys"},
                 "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"}},
        "c4": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}},
        "qa": {"file_name": "qa.jsonl", "columns": {"prompt": "q", "response": "a"}},
        "hub": {"hf_hub_url": "someone/data"},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    chat, c4, qa = _samples(f"{tmp_path}/dataset_info.json:chat,c4,qa")
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant"]
    assert c4.text == "raw"
    assert qa.messages[-1]["content"] == "A"
    assert len(_samples(datasets=["chat"], dataset_dir=str(tmp_path))) == 1
    with pytest.raises(UserError, match="not a local file"):
        _samples(f"{tmp_path}/dataset_info.json:hub")
    with pytest.raises(UserError, match="no dataset named 'nope'"):
        _samples(f"{tmp_path}/dataset_info.json:nope")


def test_format_forced(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"text": "t", "instruction": "i", "output": "o"}])
    (s,) = list(iter_samples(resolve_sources([str(f)], format_data="text")))
    assert s.text == "t"


def test_sampling_is_uniform_subset_with_total(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"text": str(i)} for i in range(1000)])
    scan = Scan()
    picked = list(iter_samples(resolve_sources([str(f)]), sample=50, scan=scan))
    assert len(picked) == 50 and scan.records == 1000
    assert len({s.text for s in picked}) == 50
    assert [s.line for s in picked] == sorted(s.line for s in picked)


def test_demo_resolves_and_is_bilingual():
    samples = _samples("demo")
    assert 150 <= len(samples) <= 300
    assert demo_path().name == "demo.jsonl"
    texts = " ".join(m["content"] for s in samples for m in s.messages)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in texts) and "the" in texts
    assert sum(1 for s in samples if len(s.messages) > 2) >= 10  # some multi-turn history


# --- bad input: one clear error naming file:line -------------------------------------------------

def test_malformed_jsonl_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{"text": "broken"\n')
    with pytest.raises(UserError, match=r"bad\.jsonl:2: malformed JSON"):
        _samples(str(f))


def test_malformed_json_array(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('[\n  {"text": "a"},\n  {"text": "b",,}\n]\n')
    with pytest.raises(UserError, match=r"bad\.json:3: malformed JSON"):
        _samples(str(f))


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.json", "bad.csv"])
def test_non_utf8_names_the_line(tmp_path, name):
    f = tmp_path / name
    body = {"bad.jsonl": b'{"text": "ok"}\n{"text": "\xff\xfe"}\n',
            "bad.json": b'[{"text": "ok"},\n{"text": "\xff"}]',
            "bad.csv": b"text\nok\n\xff\n"}[name]
    f.write_bytes(body)
    with pytest.raises(UserError, match=rf"{name.replace('.', '.')}:(2|3): the file is not UTF-8"):
        _samples(str(f))


def test_empty_dataset(tmp_path):
    for name, body in (("e.jsonl", ""), ("e.json", "[]"), ("e2.jsonl", "\n\n")):
        (tmp_path / name).write_text(body)
        with pytest.raises(UserError, match="dataset is empty"):
            _samples(str(tmp_path / name))


def test_missing_fields_say_expected_and_found(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "i", "output": "o"}, {"instruction": "x", "answer": "y"}])
    with pytest.raises(UserError, match=r"a\.jsonl:2: alpaca records need the field\(s\) instruction, output; "
                                        r"found: answer, instruction"):
        _samples(str(f))


def test_unknown_format_hint(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"question": "q", "reply": "r"}])
    with pytest.raises(UserError) as err:
        _samples(str(f))
    assert "a.jsonl:1" in str(err.value) and "--format-data" in str(err.value)


def test_unknown_role_and_missing_path(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"conversations": [{"from": "alien", "value": "x"}]}])
    with pytest.raises(UserError, match="unknown role 'alien'"):
        _samples(str(f))
    with pytest.raises(UserError, match="no such file"):
        _samples(str(tmp_path / "missing.json"))


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(UserError, match="needs pyarrow"):
        _samples(str(tmp_path / "x.parquet"))


# --- property tests: odd but valid input --------------------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(instruction=texts, query=texts, output=texts, history=st.lists(st.tuples(texts, texts), max_size=8))
def test_alpaca_roundtrip(tmp_path, instruction, query, output, history):
    rec = {"instruction": instruction, "input": query, "output": output, "history": [list(h) for h in history]}
    f = tmp_path / "p.json"
    f.write_text(json.dumps([rec], ensure_ascii=False), encoding="utf-8")
    (s,) = _samples(str(f))
    user = instruction + "\n" + query if instruction and query else (instruction or query)
    assert s.messages[-2]["content"] == user and s.messages[-1]["content"] == output
    assert len(s.messages) == 2 + 2 * len(history)


@settings(max_examples=40, deadline=None)
@given(turns=st.lists(texts, min_size=1, max_size=60), long=st.integers(0, 20000))
def test_sharegpt_many_turns(turns, long):
    convo = [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]
    convo[0]["value"] += "x" * long
    s = to_sample({"conversations": convo}, FormatSpec("sharegpt"), "f", 1)
    assert [m["content"] for m in s.messages] == [c["value"] for c in convo]


lines = st.lists(st.one_of(st.just(""), st.just("  "), st.text("ab{}\r\t ", max_size=40)), max_size=30)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=lines, trailing=st.booleans(), size=st.integers(1, 64))
def test_line_blocks_cover_every_line_once(tmp_path, body, trailing, size):
    """Blocks of any size (also shorter than a line) give the lines and numbers a plain read gives."""
    from planner.data.records import iter_block_lines, iter_raw_lines, line_blocks

    f = tmp_path / "b.jsonl"
    f.write_bytes(("\n".join(body) + ("\n" if trailing else "")).encode())
    blocks = list(line_blocks(f, size=size))
    assert sum(length for _, length, _ in blocks) == f.stat().st_size
    got = [(n, raw.rstrip(b"\n")) for b in blocks for n, raw in iter_block_lines(f, *b)]
    assert got == [(n, raw.rstrip(b"\n")) for n, raw in iter_raw_lines(f)]


strings = st.text(st.sampled_from('ab "\\/[]{},:\n\t\u00e9\u4e2d\U0001f600'), max_size=12)
values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), strings),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(strings, inner, max_size=3),
                      max_leaves=8)


def _array_records(path, size, read):
    from planner.data.records import array_blocks, iter_block_elements

    return [rec for block in array_blocks(path, size=size, read=read) for rec in iter_block_elements(path, *block)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(st.dictionaries(strings, values, max_size=4), max_size=12),
       indent=st.sampled_from([None, 1, 2, "\t"]), bom=st.booleans(), size=st.integers(1, 200),
       read=st.integers(1, 64), ascii_only=st.booleans())
def test_array_blocks_give_every_record_once(tmp_path, records, indent, bom, size, read, ascii_only):
    """Blocks of any size and reads of any size (cutting strings, escapes and UTF-8 anywhere) give the
    records and line numbers the streaming parser gives."""
    from planner.data.records import iter_records

    f = tmp_path / "a.json"
    body = json.dumps(records, indent=indent, ensure_ascii=ascii_only).encode()
    f.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body)
    assert _array_records(f, size, read) == list(iter_records(f))


@pytest.mark.parametrize(("body", "line", "message"), [
    ('[\n  {"a": 1},\n  {"a": 2},\n]\n', 4, "expected a record after ','"),
    ('[\n  {"a": 1}\n  {"a": 2}\n]\n', 3, "expected ',' or ']' between records"),
    ('[\n  {"a": 1},\n  {"a": 2,,}\n]\n', 3, "malformed JSON"),
    ('[\n  {"a": 1},\n  {"a": 2}\n', 4, "missing ']'"),
    ('[\n  {"a": 1},\n  {"a": "never closed}]\n', 3, "Invalid control character"),  # the string's line
    ('x[{"a": 1}]', 1, "expected '\\['"),
    ('\n\n{"a": 1}', 3, "expected '\\['"),
])
def test_array_blocks_errors_name_the_line(tmp_path, body, line, message):
    f = tmp_path / "bad.json"
    f.write_text(body)
    for size in (1, 1 << 20):
        with pytest.raises(UserError, match=rf"bad\.json:{line}: .*{message}"):
            _array_records(f, size, 7)


def test_array_blocks_non_utf8_names_the_line(tmp_path):
    f = tmp_path / "bad.json"
    f.write_bytes(b'[{"text": "ok"},\n{"text": "\xff"}]')
    with pytest.raises(UserError, match=r"bad\.json:2: the file is not UTF-8"):
        _array_records(f, 1, 5)


@pytest.mark.parametrize(("record", "message"), [
    ({"instruction": 5, "input": "", "output": "x"}, "field 'instruction' should be a string, found int"),
    ({"instruction": "a", "input": "", "output": ["x", "y"]}, "field 'output' should be a string, found a list"),
    ({"instruction": "a", "input": {"k": 1}, "output": "x"}, "field 'input' should be a string, found dict"),
    ({"conversations": [{"from": "human", "value": 42}, {"from": "gpt", "value": "ok"}]},
     "field 'value' should be a string, found int"),
    ({"conversations": "hello"}, "'conversations' should be a list of turns, found str"),
    ({"messages": {"role": "user"}}, "'messages' should be a list of turns, found dict"),
])
def test_wrong_field_types_are_errors_at_file_line(tmp_path, record, message):
    f = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "fine", "input": "", "output": "ok"}, record]
                    if "instruction" in record else [record])
    with pytest.raises(UserError) as err:
        _samples(str(f))
    assert message in err.value.message and f"a.jsonl:{2 if 'instruction' in record else 1}:" in err.value.message
    assert "found: conversations" not in err.value.message


def test_conversations_not_a_list_with_forced_format(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [{"conversations": "hello"}])
    with pytest.raises(UserError, match="'conversations' should be a list of turns, found str"):
        _samples(str(f), format_data="sharegpt")


def test_ranking_data_keeps_its_answer_objects():
    s = to_sample({"instruction": "q", "input": "", "chosen": {"from": "gpt", "value": "longer answer"},
                   "rejected": "short"}, FormatSpec("alpaca", ranking=True), "f", 1)
    assert s.messages[-1]["content"] == "longer answer"


@pytest.mark.parametrize(("body", "line", "what"), [
    ('instruction,output\n"a","b"\n"abc,def\nx,y\n', 3, "a quoted field is never closed"),
    ('instruction,output\n"a","b"\n"abc,def\nx,y\n"z",w\n', 3, "malformed CSV"),
])
def test_unterminated_csv_quote_is_an_error(tmp_path, body, line, what):
    (tmp_path / "d.csv").write_text(body)
    with pytest.raises(UserError) as err:
        _samples(str(tmp_path / "d.csv"))
    assert f"d.csv:{line}: {what}" in err.value.message


def test_csv_quotes_inside_fields_still_read(tmp_path):
    (tmp_path / "d.csv").write_text('instruction,output\nsay "hi" now,x\n"q""uote",y\n')
    first, second = _samples(str(tmp_path / "d.csv"))
    assert first.messages[0]["content"] == 'say "hi" now' and second.messages[0]["content"] == 'q"uote'
