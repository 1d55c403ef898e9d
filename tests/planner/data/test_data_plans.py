"""Counting through a template skeleton's count plan (no rendering) equals the real tokenizer on the rendered
text, whatever the contents hold at the seams; templates whose seams are not safe fall back to rendering."""

from __future__ import annotations

import pytest
from data_helpers import spec_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.data.fastcount import FastCounter
from planner.data.formats import Sample
from planner.data.pipeline import prepare

# Contents built from what matters at a seam: leading/trailing whitespace, added tokens and their first
# character, combining marks, CJK, contractions, punctuation before a line break.
SEAMS = ["", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\xa0", "x", "word", " lead", "<", "<|im_end|>",
         "<|im_start|>", "é", "e\u0301", "\u0301", "\u0338", "中文", "'s", "!", ".", "1", "😀", "<think>", "</think>"]
contents = st.lists(st.sampled_from(SEAMS), max_size=8).map("".join)

# Qwen3-style: the assistant's content is lstripped of line breaks and tested for '</think>'; the user's is
# trimmed. The Alpaca-style one has seams inside plain text ("### Response:\n" + content + "\n\n").
TEMPLATES = {
    "chains": ("{%- for m in messages %}<|im_start|>{{ m.role }}\n"
               "{%- if m.role == 'assistant' %}{%- if '</think>' in m.content %}{{ '\nreasoned\n' }}{%- endif %}"
               "{{ '\n' + m.content.lstrip('\n') }}{%- else %}{{ '\n' + m.content | trim }}{%- endif %}"
               "<|im_end|>\n{%- endfor %}"),
    "plain-seams": ("{%- for m in messages %}{%- if m.role == 'user' %}{{ '### Instruction:\n' + m.content + '\n\n' }}"
                    "{%- else %}{{ '### Response:\n' + m.content + '\n\n' }}{%- endif %}{%- endfor %}"),
}


def _chat(user: str, answer: str, system: str | None = None) -> Sample:
    turns = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return Sample(tuple(turns), None, None, "t.jsonl", 1)


def _warm(bpe_folder, tmp_path_factory, template: str | None):
    path = None
    if template:
        path = tmp_path_factory.mktemp("tpl") / "t.jinja"
        path.write_text(TEMPLATES[template])
    prep = prepare(spec_for(bpe_folder), template=str(path) if path else None)
    # past the samples always verified against the tokenizer and the skeleton's first checks
    prep.count([_chat(f"warm up {i}", "fine") for i in range(200)] + [_chat("s", "a", "sys")] * 10)
    return prep


@pytest.fixture(scope="module", params=[None, "chains", "plain-seams"])
def warm_prep(request, bpe_folder, tmp_path_factory):
    return request.param, _warm(bpe_folder, tmp_path_factory, request.param)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=contents, answer=contents, system=st.one_of(st.none(), contents))
def test_planned_counts_equal_the_tokenizer(warm_prep, user, answer, system):
    _, prep = warm_prep
    sample = _chat(user, answer, system)
    got = prep.count([sample] * 3)
    assert got == prep.counter.count_slow([prep.render(sample)]) * 3
    assert prep.counter.fast is not None  # no disagreement sent it back to the slow path


def test_every_seam_case_counts_exactly(warm_prep):
    """Each seam string at the start, at the end and alone, in every turn (not left to chance)."""
    _, prep = warm_prep
    texts = [t for seam in SEAMS for t in (seam + "abc", "abc" + seam, seam)]
    samples = [_chat(t, "answer", "sys") for t in texts] + [_chat("question", t) for t in texts] + \
        [_chat("question", "answer", t) for t in texts]
    for sample in samples:  # one at a time, each counted three times: the plan path is taken after the first
        assert prep.count([sample] * 3) == prep.counter.count_slow([prep.render(sample)]) * 3, sample.messages
    assert prep.counter.fast is not None


def test_plans_are_used_where_the_seams_allow(warm_prep, monkeypatch):
    name, prep = warm_prep
    calls = []
    original = FastCounter.count_planned
    monkeypatch.setattr(FastCounter, "count_planned",
                        lambda self, plan, values: calls.append(1) or original(self, plan, values))
    samples = [_chat(f"question {i}", f"answer {i}") for i in range(300)]
    assert prep.count(samples) == prep.counter.count_slow([prep.render(s) for s in samples])
    plans = list(prep.counter.fast.plans.values())
    if name == "plain-seams":  # "\n" + content + "\n\n": a line break after a content is no boundary
        assert calls == [] and plans and not any(plan and plan[2] for plan in plans)
    else:
        assert len(calls) > 250 and any(plans)


class _Shape:
    def __init__(self, segments):
        self._segments = segments

    def segments(self):
        return self._segments


@pytest.mark.parametrize(("segments", "planned"), [
    ([("text", "<|im_start|>user\n", False), ("slot", False), ("text", "<|im_end|>\n", False)], True),
    # a literal cut at a span edge after a line break: fine before text, not before more whitespace
    ([("text", "<|im_start|>a\n", False), ("text", "b<|im_end|>", True)], True),
    ([("text", "<|im_start|>a\n", False), ("text", "\n b<|im_end|>", True)], False),
    ([("text", "a ", False), ("text", "b", True)], False),  # " b" is one piece
    ([("text", "user: ", False), ("slot", False), ("text", "<|im_end|>", False)], False),  # no line break
    ([("text", "<|im_start|>", False), ("slot", False), ("text", "\n", False)], False),  # text after a slot
    ([("slot", False), ("slot", True), ("text", "<|im_end|>", False)], False),  # two slots meet
    ([("slot", True)], True),  # the whole text
])
def test_plan_takes_only_certain_seams(warm_prep, segments, planned):
    _, prep = warm_prep
    fast = prep.counter.fast
    plan = fast.plan(_Shape(segments))
    assert (plan is not None) == planned
    if plan is not None:  # the constant part is the literals' own count
        texts = [seg[1] for seg in segments if seg[0] == "text"]
        assert plan[0] == sum(prep.counter.count_slow([(t, [])])[0][0] for t in texts)
