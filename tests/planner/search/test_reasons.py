"""Every speed word in a plan's reasons agrees with the figures beside it; overriding rules are said."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from search_helpers import make_data, setup, spec

from planner.errors import Infeasible
from planner.model.catalog import load_models
from planner.search import search
from planner.search.reasons import speed_phrase

_PCT = re.compile(r"(-?\d+|<1)% (slower|faster|more|less)\b[^(]{0,40}\(([\d,.]+) vs ([\d,.]+)")
_BARE = re.compile(r"(?<!% )(?<!%)\b(slower|faster) \(([\d,.]+) vs ([\d,.]+)")
_AS_FAST = re.compile(r"as fast \(([\d,.]+) vs ([\d,.]+)")


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def contradictions(text: str) -> list[str]:
    """Phrases whose word, sign or percentage disagrees with the two figures in brackets after them."""
    bad = []
    for m in _PCT.finditer(text):
        pct, word, a, b = m[1], m[2], _num(m[3]), _num(m[4])
        bigger = word in ("faster", "more")
        if pct.startswith("-") or (bigger and a <= b) or (not bigger and a >= b):
            bad.append(m[0])
        elif pct != "<1" and abs(int(pct) - abs(a / b - 1) * 100) > 1.01:  # figures are rounded for display
            bad.append(m[0])
    for m in _BARE.finditer(text):
        a, b = _num(m[2]), _num(m[3])
        if (m[1] == "faster") != (a > b):
            bad.append(m[0])
    for m in _AS_FAST.finditer(text):
        if m[1] != m[2]:
            bad.append(m[0])
    if "would only slow it down" in text:
        bad.append("'quantizing would only slow it down' is not a measured claim")
    return bad


def test_the_checker_catches_the_reported_phrases():
    assert contradictions("-12% slower (2,193 vs 1,966 tokens/s)")
    assert contradictions("ZeRO-2 fits too but is slower (1,396 vs 839 tokens/s)")
    assert contradictions("12% faster (1,966 vs 2,193 tokens/s)")
    assert not contradictions("24% slower (1,180 vs 1,551 tokens/s): dequantizes")
    assert not contradictions(speed_phrase(2193, 1966)) and "12% faster" in speed_phrase(2193, 1966)
    assert speed_phrase(1000.4, 1000.2).startswith("as fast")
    assert speed_phrase(1001, 1000).startswith("<1% faster")


MODELS = sorted({e.name for e in load_models()})
CARDS = ["RTX4090", "RTX3090", "H100", "A100-40G", "L4", "T4"]
PINS = st.sampled_from([{}, {"finetuning_type": "lora", "quantization_bit": None}, {"gradient_checkpointing": True},
                        {"gradient_checkpointing": False}, {"use_liger_kernel": False}, {"cutoff_len": 4096}])
DATA = make_data()


def _texts(plan) -> list[str]:
    return [w for _, _, w in plan.reasons] + [c.why for c in plan.runners_up]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from(MODELS), card=st.sampled_from(CARDS), count=st.sampled_from([1, 2, 8]),
       pinned=PINS, with_data=st.booleans())
@example(model="Qwen2.5-14B", card="L4", count=2, pinned={}, with_data=False)  # a faster QLoRA lost by the rule
@example(model="Llama-2-13b-hf", card="RTX4090", count=2, pinned={}, with_data=False)  # same
@example(model="Qwen2.5-7B", card="RTX4090", count=2, pinned={}, with_data=True)
def test_speed_words_agree_with_their_figures(model, card, count, pinned, with_data):
    try:
        plan = search(spec(model), setup(card, count), DATA if with_data else None, pinned=pinned)
    except Infeasible:
        return
    for text in _texts(plan):
        assert not contradictions(text), text


# Setups where the throughput model calls QLoRA faster than the 16-bit winner (the memory model decides
# which; at least one of them must be such a case for the test to say anything).
RULE_CASES = [("Qwen2.5-14B", "L4", 2), ("Llama-2-13b-hf", "RTX4090", 2), ("phi-4", "RTX3090", 2),
              ("Phi-3-medium-4k-instruct", "RTX4090", 2), ("Qwen3-4B", "L4", 1), ("gemma-2-9b", "RTX3090", 1)]


def test_a_faster_quantized_runner_up_names_the_rule():
    checked = 0
    for model, card, count in RULE_CASES:
        plan = search(spec(model), setup(card, count), None, pinned={})
        q = [c for c in plan.runners_up if c.config.quantization_bit and c.fits
             and round(c.tokens_per_s) > round(plan.throughput.tokens_per_s)]
        if plan.config.quantization_bit or not q:
            continue
        checked += 1
        assert "faster" in q[0].why and "1.25x" in q[0].why, q[0].why
        method = dict((k, w) for k, _, w in plan.reasons)["method"]
        assert "faster" in method and "1.25x" in method, method
    assert checked, "no setup left where a faster QLoRA loses by the rule: update RULE_CASES"
