"""Token statistics equal LLaMA-Factory's own data pipeline on the exported config (template, system prompt,
tools, truncation, trained tokens), for alpaca, sharegpt with tools, OpenAI messages and text data.

Runs when LLaMA-Factory is importable: installed, or unpacked beside the environment and named by
VRAMPLAN_LF_SITE (`pip install --no-deps --target DIR llamafactory==0.9.5` plus the packages its data code
imports; .ci/run does this). Its pipeline runs in a subprocess (llamafactory_pipeline.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_helpers import spec_for, write_jsonl

from planner.data import DataRequest, analyze
from planner.exports.llamafactory import _all_text, dataset_keys, lf_template


def _lf_available() -> str | None:
    """None when LLaMA-Factory can be imported by the helper, else why not."""
    site = os.environ.get("VRAMPLAN_LF_SITE")
    if site and (Path(site) / "llamafactory").is_dir():
        return None
    if importlib.util.find_spec("llamafactory") is not None:
        return None
    return ("LLaMA-Factory is not importable: `pip install --no-deps --target DIR llamafactory==0.9.5 datasets "
            "dill multiprocess xxhash pandas omegaconf antlr4-python3-runtime==4.9.3` and set VRAMPLAN_LF_SITE=DIR "
            "(.ci/run does)")


TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
DATA = {
    "alpaca": [
        {"instruction": "Translate to French.", "input": "good morning", "output": "bonjour"},
        {"instruction": "Write a function that squares numbers.", "input": "",
         "output": "def main():\n    return sum(x * x for x in range(10))  # squares\n"},
        {"instruction": "细胞理论是什么？", "input": "", "output": "细胞理论是生物科学的一个理论，它认为所有生命体都是由细胞构成。" * 4},
    ],
    "sharegpt": [
        {"conversations": [
            {"from": "human", "value": "What's the weather in Paris?"},
            {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
            {"from": "observation", "value": json.dumps({"temperature": 21, "sky": "clear"})},
            {"from": "gpt", "value": "It is 21 degrees and clear in Paris."}],
         "tools": json.dumps(TOOLS)},
        {"conversations": [
            {"from": "human", "value": "Hi there."}, {"from": "gpt", "value": "Hello! How can I help?"},
            {"from": "human", "value": "Tell me a joke about résumés 😀"},
            {"from": "gpt", "value": "Café, naïve, résumé — ünïcödé text with emojis 😀🚀 " * 3}],
         "tools": json.dumps(TOOLS)},
    ],
    "messages": [
        {"messages": [{"role": "system", "content": "You are terse."},
                      {"role": "user", "content": "Instruction: translate to French.\nInput: good morning"},
                      {"role": "assistant", "content": "bonjour"}]},
        {"messages": [{"role": "user", "content": "First.\n\nSecond.\n\n\nThird:\n  - indented"},
                      {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."},
                      {"role": "user", "content": "Again?"},
                      {"role": "assistant", "content": "It's 2024, and we'll see what they've done. " * 5}]},
    ],
    "text": [
        {"text": "The quick brown fox jumps over the lazy dog. " * 6},
        {"text": "Café, naïve, résumé — ünïcödé text with emojis 😀🚀 and numbers 3.14159, 1,000,000."},
    ],
}
BIG = 100_000  # no truncation
SMALL = 24  # truncates most samples: LLaMA-Factory's shared cutoff (infer_seqlen) keeps min(length, cutoff)


def _job(spec, folder: Path, path: Path, out: Path, cutoff: int) -> dict:
    keys, info, _ = dataset_keys({"data": [str(path)]}, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    config = {"model_name_or_path": str(folder), "stage": "pt" if _all_text({"data": [str(path)]}) else "sft",
              "do_train": True, "finetuning_type": "lora", "dataset": keys["dataset"],
              "dataset_dir": keys["dataset_dir"], "template": lf_template(spec), "cutoff_len": cutoff,
              "packing": False, "output_dir": str(out / "lf"), "overwrite_cache": True, "report_to": "none",
              "preprocessing_num_workers": None}
    return {"config": config}


@pytest.mark.parametrize("model_type,template", [("qwen2", "qwen"), ("qwen3", "qwen3")])
def test_statistics_equal_llamafactorys_pipeline(bpe_folder, tmp_path, model_type, template):
    """qwen: ChatML with Qwen's default system prompt; qwen3: no default system, an empty thought trained in
    every assistant turn."""
    why = _lf_available()
    if why:
        pytest.skip(why)
    spec = spec_for(bpe_folder, model_type=model_type, head_dim=16)
    files = {fmt: write_jsonl(tmp_path / f"{fmt}.jsonl", rows) for fmt, rows in DATA.items()}
    jobs, keys = [], []
    for fmt, path in files.items():
        for cutoff in (BIG, SMALL):
            jobs.append(_job(spec, bpe_folder, path, tmp_path / f"{fmt}-{cutoff}", cutoff))
            keys.append((fmt, cutoff))
    (tmp_path / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    helper = Path(__file__).with_name("llamafactory_pipeline.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")}
    proc = subprocess.run([sys.executable, str(helper), str(tmp_path / "jobs.json"), str(tmp_path / "lf.json")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = dict(zip(keys, json.loads((tmp_path / "lf.json").read_text()), strict=True))
    for fmt, path in files.items():
        stats = analyze(DataRequest(data=(str(path),), use_cache=False), spec, progress=False)
        assert stats.template == template, stats.template  # LLaMA-Factory's, as the export names it
        full, cut = results[(fmt, BIG)], results[(fmt, SMALL)]
        assert stats.samples == len(full), fmt
        assert list(stats.lengths) == sorted(x[0] for x in full), fmt
        if fmt != "text":
            assert stats.response_tokens == sum(x[1] for x in full), fmt
        cut_samples, cut_tokens = stats.truncated_counts(SMALL)
        assert cut_samples == sum(1 for x in full if x[0] > SMALL) > 0, fmt
        assert sum(x[0] for x in cut) == stats.tokens_total - cut_tokens, fmt
