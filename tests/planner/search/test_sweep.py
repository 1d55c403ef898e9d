"""`--sweep`: one row per (card, GPU count)."""

from __future__ import annotations

import io
import json

from search_helpers import spec

from planner.search.sweep import DEFAULT_CARDS, DEFAULT_COUNTS, sweep


def test_sweep_shape_and_json(estimator, data):
    table = sweep(spec("Qwen2.5-7B"), data, estimator=estimator)
    assert len(table.rows) == len(DEFAULT_CARDS) * len(DEFAULT_COUNTS)
    assert [(r.card, r.count) for r in table.rows][:4] == [(table.rows[0].card, n) for n in DEFAULT_COUNTS]
    fitting = [r for r in table.rows if r.fits]
    assert fitting, "7B LoRA fits somewhere"
    for r in fitting:
        assert r.method in ("lora", "qlora") and r.cutoff_len and r.tokens_per_s > 0 and r.total_seconds > 0
    doc = json.loads(json.dumps(table.to_json()))
    assert doc["model"] == "Qwen2.5-7B" and len(doc["rows"]) == len(table.rows)


def test_sweep_marks_what_does_not_fit(estimator):
    table = sweep(spec("Qwen2.5-72B"), None, cards=("RTX-4090", "H200-141G"), counts=(1, 8),
                  pinned={"finetuning_type": "full"}, estimator=estimator)
    rows = {(r.card, r.count): r for r in table.rows}
    assert not rows[("RTX-4090", 1)].fits and rows[("RTX-4090", 1)].note.startswith("needs")
    from rich.console import Console

    buf = io.StringIO()
    table.render(Console(file=buf, width=150))
    assert "does not fit" in buf.getvalue()
