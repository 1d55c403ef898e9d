"""The one rendering + tokenizing path shared by the planner's statistics and the runner's training data.

    >>> prep = prepare(request, model)
    >>> for sample, text, spans in prep.rendered(samples): ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.data.encode import Counter, ExactCounter
from planner.data.estimate import EstimateCounter
from planner.data.formats import Sample
from planner.data.skeleton import Skeletons
from planner.data.templates import BUILTIN, LF_RENDERED, ChatTemplate, family_template, unknown_template
from planner.data.tokenizer_files import TokenizerFiles, pick_template, resolve_tokenizer
from planner.errors import UserError
from planner.model.spec import ModelSpec
from planner.trainers import DEFAULT_TRAINER

Spans = list[tuple[int, int]]


@dataclass(frozen=True)
class Prepared:
    """Tokenizer, counter and templates chosen for one request."""

    tokenizer: TokenizerFiles
    counter: Counter
    chat: ChatTemplate
    chat_tools: ChatTemplate  # the template used when a sample has tools (named templates differ)
    eos_token: str
    skeletons: dict[int, Skeletons] = field(default_factory=dict, compare=False, repr=False)
    note: str | None = None  # said with the statistics: which template the trainer's recipe renders

    @property
    def template_name(self) -> str:
        return self.chat.name

    def render(self, sample: Sample) -> tuple[str, Spans]:
        """Text as training tokenizes it, and the spans that become labels."""
        if sample.text is not None:  # pretraining: text + EOS, every token is a label
            text = sample.text + self.eos_token
            return text, [(0, len(text))]
        template = self.chat_tools if sample.tools else self.chat
        try:
            got = self._skeletons(template).render_spans(sample.messages, sample.tools)
            return got if got is not None else template.render_spans(sample.messages, sample.tools)
        except UserError:
            raise
        except Exception as exc:  # the template's own raise_exception and jinja errors
            raise UserError(f"{sample.file}:{sample.line}: the chat template {template.name} rejected the "
                            f"sample: {exc}",
                            "Check the roles (most templates want user/assistant turns in order), or choose "
                            "another with --template.") from None

    def count(self, samples: list[Sample]) -> list[tuple[int, int]]:
        """(total, response) tokens per sample, as render() + the counter give them; with the exact counter's
        fast path, samples whose template skeleton has a count plan are counted without rendering."""
        if isinstance(self.counter, ExactCounter):
            return self.counter.count_samples(samples, self.render, self._planned)
        return self.counter.count([self.render(s) for s in samples])

    def _planned(self, sample: Sample) -> tuple[int, int] | None:
        fast = self.counter.fast  # type: ignore[attr-defined]
        if fast is None or sample.text is not None or sample.tools:
            return None
        found = self._skeletons(self.chat).planned(sample.messages, None)
        if found is None:
            return None
        shape, values = found
        plan = fast.plan(shape)
        return fast.count_planned(plan, values) if plan is not None else None

    def _skeletons(self, template: ChatTemplate) -> Skeletons:
        skeletons = self.skeletons.get(id(template))
        if skeletons is None:
            skeletons = self.skeletons[id(template)] = Skeletons(template)
        return skeletons

    def rendered(self, samples: Iterable[Sample]) -> Iterator[tuple[Sample, str, Spans]]:
        for sample in samples:
            text, spans = self.render(sample)
            yield sample, text, spans


def prepare(model: ModelSpec, *, tokenizer: str | None = None, template: str | None = None,
            trainer: str | None = None) -> Prepared:
    """Resolve the tokenizer chain and the template: the one --template names, else the one the trainer's recipe
    renders (LLaMA-Factory: the template the exported llamafactory.yaml names, when vramplan renders it as
    LLaMA-Factory does), else the model's own."""
    files = resolve_tokenizer(tokenizer, model)
    special = dict(files.special_tokens)
    counter: Counter
    if files.tokenizer_json is not None:
        counter = ExactCounter(files.tokenizer_json)
    else:
        counter = EstimateCounter.for_model(model.model_type)
    note = None
    if template and template != "model":
        path = Path(template).expanduser()
        if template.endswith(".jinja") or path.is_file():
            if not path.is_file():
                raise UserError(f"--template {template}: no such file.")
            chat = ChatTemplate.from_file(path, special)
        elif template in BUILTIN:
            chat = ChatTemplate.builtin(template, special)
        else:
            raise unknown_template(template)
        return Prepared(files, counter, chat, chat, special.get("eos_token", ""))
    if template is None and (trainer or DEFAULT_TRAINER) == "llamafactory":
        from planner.exports.llamafactory import lf_template

        name = lf_template(model)
        if name in LF_RENDERED:
            chat = ChatTemplate.builtin(name, special)
            note = (f"template {name}: LLaMA-Factory's, as the exported llamafactory.yaml names it "
                    f"({LF_RENDERED[name]}); --template model counts with the tokenizer's own")
            return Prepared(files, counter, chat, chat, special.get("eos_token", ""), note=note)
        note = (f"LLaMA-Factory trains with its `{name}` template (the exported llamafactory.yaml names it); "
                f"vramplan renders only {', '.join(LF_RENDERED)} as LLaMA-Factory does, so these counts use the "
                f"model's own template")
    own = pick_template(files.chat_template, has_tools=False)
    if own is not None:
        chat = ChatTemplate("model", own, special)
        tools_chat = ChatTemplate("model", pick_template(files.chat_template, has_tools=True) or own, special)
    elif template == "model" and files.tokenizer_json is not None:
        # A tokenizer without a template. (Offline, with no tokenizer at all, `model` means what the
        # default means: the family's template, as the estimate stands in for the tokenizer.)
        raise UserError(f"--template model: the tokenizer ({files.location}) has no chat template.",
                        f"Choose a built-in one: {', '.join(BUILTIN)}.")
    else:
        chat = tools_chat = ChatTemplate.builtin(family_template(model.model_type, model.vocab_size), special)
    return Prepared(files, counter, chat, tools_chat, special.get("eos_token", ""), note=note)


def template_identity(prep: Prepared) -> dict[str, Any]:
    """What the cache key must change with: template sources and the special tokens they see."""
    return {"chat": prep.chat.source, "tools": prep.chat_tools.source, "special": prep.chat.special_tokens,
            "eos": prep.eos_token}
