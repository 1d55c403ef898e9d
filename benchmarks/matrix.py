"""The measured configurations, as data: a calibration set (fitted) and a disjoint held-out accuracy set.

Each Case is one short training run (a few optimizer steps) of a model built from profiles/ with
random weights. Features are spread over both sets (method, checkpointing, Liger, attention, model
size 0.5B-14B, sequence 512-16k, batch 1-8) so the held-out set tests interpolation, not memorization.
Cases are ordered by priority: a time-boxed GPU session runs them top down.

    >>> [c.name for c in CALIBRATION][:2]
    ['cal-qwen2.5-0.5b-lora-r16-s512-b1-ckpt', 'cal-qwen2.5-0.5b-lora-r16-s2048-b4']
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from planner.model.catalog import find_model
from planner.model.spec import ModelSpec
from planner.train_config import TrainConfig

# Tiny architectures for CPU runs of the harness (CI): same code path, seconds instead of minutes.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
             "max_position_embeddings": 4096, "tie_word_embeddings": True, "rms_norm_eps": 1e-6},
    "tiny-llama": {"model_type": "llama", "hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 2,
                   "num_attention_heads": 6, "num_key_value_heads": 2, "vocab_size": 640,
                   "max_position_embeddings": 4096, "tie_word_embeddings": False, "rms_norm_eps": 1e-5},
}


def resolve_model(name: str, layers: int | None = None) -> ModelSpec:
    """A catalog model (profiles/models) or one of the tiny test architectures.

    layers: a shortened copy with this many decoder layers (a few-layer MoE fits a quick GPU case
    and still shows what happens to its experts).
    """
    if name in TINY_CONFIGS:
        config = dict(TINY_CONFIGS[name])
    else:
        entry = find_model(name)
        if entry is None:
            raise KeyError(f"model {name!r} is neither in profiles/models nor a tiny test model")
        if not layers:
            return entry.spec
        config = dict(entry.spec.config)
    if layers:
        config["num_hidden_layers"] = layers
        for key in ("layer_types", "mlp_only_layers"):  # per-layer lists follow the depth
            if isinstance(config.get(key), list):
                config[key] = config[key][:layers]
        name = f"{name}-{layers}L"
    return ModelSpec.from_config(config, name=name)


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    name: str
    model: str  # catalog name or a TINY_CONFIGS key
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields that differ from its defaults
    steps: int = 3  # optimizer steps; the peak is reached at step 2 (optimizer states exist)
    budget_bytes: int | None = None  # cap the allocator so that allocator + context fit this budget
    group: str = "calibration"
    # the trainer recipe (planner.trainers): "peft" = prepare_model_for_kbit_training for k-bit (fp32 upcast of
    # every non-quantized weight) and non-reentrant checkpointing, as every case before recipes existed
    # was measured; "llamafactory" = LLaMA-Factory's (no upcast)
    recipe: str = "peft"
    env: dict[str, str] = field(default_factory=dict)  # environment of the measuring process (allocator)
    layers: int | None = None  # shortened model (resolve_model)

    def spec(self) -> ModelSpec:
        return resolve_model(self.model, self.layers)

    def train_config(self) -> TrainConfig:
        train = dict(self.train)
        train.setdefault("trainer", self.recipe)  # the recipe's name is the trainer whose recipe it is
        if isinstance(train.get("lora_target"), str):
            train["lora_target"] = tuple(train["lora_target"].split(","))
        return TrainConfig(**train)

    @property
    def tokens(self) -> int:
        t = self.train_config()
        return t.per_device_train_batch_size * t.cutoff_len

    def key(self) -> tuple:
        """What is measured, regardless of the name: (model, every TrainConfig field, budget, recipe, env)."""
        return (self.model, tuple(sorted(self.train_config().to_json().items())), self.budget_bytes,
                self.recipe, tuple(sorted(self.env.items())), self.layers)

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "model": self.model, "train": dict(self.train), "steps": self.steps,
               "budget_bytes": self.budget_bytes, "group": self.group}
        # only when set, so results written before these fields existed keep their exact form
        out.update({k: v for k, v in (("recipe", self.recipe if self.recipe != "peft" else None),
                                      ("env", dict(self.env) or None), ("layers", self.layers)) if v})
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Case:
        return cls(name=d["name"], model=d["model"], train=dict(d.get("train") or {}), steps=int(d.get("steps", 3)),
                   budget_bytes=d.get("budget_bytes"), group=d.get("group", "calibration"),
                   recipe=d.get("recipe") or "peft", env=dict(d.get("env") or {}), layers=d.get("layers"))

    def but(self, name: str, **changes: Any) -> Case:
        """A copy under another name with some fields changed (`train` entries merged)."""
        train = {**self.train, **changes.pop("train", {})}
        return replace(self, name=name, train=train, **changes)


def case(prefix: str, model: str, method: str, seq: int, batch: int, *, ckpt: bool = True, liger: bool = False,
         attn: str = "sdpa", rank: int = 16, ga: int = 1, dtype: str | None = None, optim: str = "adamw_torch",
         group: str | None = None, steps: int = 3) -> Case:
    """Case builder with a readable name: method is lora | qlora | full | full-amp (fp32 weights, bf16 autocast)."""
    train: dict[str, Any] = {"cutoff_len": seq, "per_device_train_batch_size": batch, "gradient_accumulation_steps": ga,
                             "gradient_checkpointing": ckpt, "use_liger_kernel": liger, "attn_implementation": attn,
                             "optim": optim}
    if method in ("lora", "qlora"):
        train.update(finetuning_type="lora", lora_rank=rank, lora_alpha=2 * rank)
        if method == "qlora":
            train["quantization_bit"] = 4
    elif method == "full":
        train.update(finetuning_type="full", dtype=dtype or "bf16")
    elif method == "full-amp":
        train.update(finetuning_type="full", dtype="fp32", amp="bf16")
    else:
        raise ValueError(method)
    label = f"{method}-r{rank}" if method in ("lora", "qlora") else method
    parts = [prefix, model.lower(), label, f"s{seq}", f"b{batch}"]
    parts += ["ckpt"] if ckpt else []
    parts += ["liger"] if liger else []
    parts += [attn] if attn != "sdpa" else []
    parts += [f"ga{ga}"] if ga != 1 else []
    parts += [optim.replace("adamw_torch_", "")] if optim != "adamw_torch" else []
    return Case("-".join(parts), model, train, steps=steps, group=group or ("calibration" if prefix == "cal" else
                                                                          "accuracy"))


Q05, Q15, Q3, Q7, Q14 = "Qwen2.5-0.5B", "Qwen2.5-1.5B", "Qwen2.5-3B", "Qwen2.5-7B", "Qwen2.5-14B"
L1, L3, L8 = "Llama-3.2-1B", "Llama-3.2-3B", "Llama-3.1-8B"

# Fitted by benchmarks/calibrate.py. Spread: every method, ckpt on/off, Liger on/off, sdpa/eager,
# sequence 512-16k, batch 1-8, 0.5B-8B.
CALIBRATION: tuple[Case, ...] = (
    case("cal", Q05, "lora", 512, 1),
    case("cal", Q05, "lora", 2048, 4, ckpt=False),
    case("cal", Q05, "full-amp", 1024, 2),
    case("cal", Q05, "full", 2048, 1, ckpt=False, attn="eager"),
    case("cal", Q15, "lora", 8192, 1, liger=True, rank=8),
    case("cal", Q15, "qlora", 4096, 2),
    case("cal", Q15, "full", 1024, 4),
    case("cal", Q3, "lora", 2048, 2, ckpt=False, rank=32),
    case("cal", Q3, "qlora", 8192, 1, liger=True),
    case("cal", Q3, "full", 512, 8),
    case("cal", Q7, "lora", 4096, 1),
    case("cal", Q7, "qlora", 16384, 1, liger=True, rank=64),
    case("cal", Q7, "lora", 1024, 2, ckpt=False, attn="eager", rank=8),
    case("cal", L8, "qlora", 2048, 4),
    case("cal", L8, "lora", 16384, 1),
    case("cal", L8, "qlora", 4096, 1, ckpt=False, liger=True),
    case("cal", L1, "full-amp", 2048, 2),
    case("cal", L3, "lora", 4096, 2, attn="eager"),
    case("cal", "Qwen3-1.7B", "qlora", 2048, 8, rank=8),
    case("cal", "Qwen3-4B", "lora", 1024, 4, ckpt=False, liger=True),
    case("cal", Q05, "lora", 16384, 1),
    case("cal", Q15, "lora", 512, 8, ckpt=False),
    case("cal", L1, "qlora", 4096, 4),
    case("cal", Q15, "lora", 2048, 2, ga=2, optim="adamw_torch_fused"),
)

# Never fitted: benchmarks/accuracy.py compares predictions with these. Same features, other values,
# plus models the calibration set does not contain (Qwen3-8B, Mistral, Gemma-2, Phi-3, Qwen2.5-14B).
ACCURACY: tuple[Case, ...] = (
    case("acc", Q05, "lora", 1024, 8, rank=8),
    case("acc", Q05, "full-amp", 2048, 1, ckpt=False),
    case("acc", Q15, "lora", 4096, 1, ckpt=False, rank=32),
    case("acc", Q15, "full", 2048, 2, liger=True),
    case("acc", Q3, "qlora", 2048, 4, rank=8),
    case("acc", Q3, "lora", 8192, 1, attn="eager"),
    case("acc", Q7, "qlora", 4096, 2),
    case("acc", Q7, "lora", 8192, 1, liger=True, rank=32),
    case("acc", Q7, "qlora", 1024, 1, ckpt=False, rank=8),
    case("acc", L8, "lora", 4096, 2, rank=8),
    case("acc", L8, "qlora", 12288, 1, rank=64),
    case("acc", L8, "lora", 2048, 1, ckpt=False, liger=True),
    case("acc", L1, "lora", 8192, 2),
    case("acc", L3, "full", 1024, 2),
    case("acc", L3, "qlora", 16384, 1, rank=32),
    case("acc", "Qwen3-0.6B", "full-amp", 4096, 1),
    case("acc", "Qwen3-1.7B", "lora", 2048, 4, attn="eager"),
    case("acc", "Qwen3-4B", "qlora", 8192, 1, liger=True),
    case("acc", "Qwen3-8B", "lora", 4096, 1),
    case("acc", "Qwen3-8B", "qlora", 2048, 2, ckpt=False, rank=32),
    case("acc", "Mistral-7B-v0.3", "lora", 2048, 2),
    case("acc", "gemma-2-2b", "lora", 2048, 2, attn="eager"),
    case("acc", "Phi-3-mini-4k-instruct", "qlora", 4096, 1),
    case("acc", Q15, "lora", 1024, 4, ga=2),
    case("acc", Q14, "qlora", 4096, 1),
)

# Open questions, each answered by a pair (or a single case) measured in the same GPU session; never fitted.
# The session's default allocator setting is expandable_segments:True (what the runner launches with);
# NO_EXPANDABLE runs the caching allocator's default instead.
NO_EXPANDABLE = {"PYTORCH_CUDA_ALLOC_CONF": ""}


def _pair(base: Case, suffix_a: str, suffix_b: str, **b_changes: Any) -> tuple[Case, Case]:
    a = base.but(f"{base.name}-{suffix_a}", group="questions")
    return a, base.but(f"{base.name}-{suffix_b}", group="questions", **b_changes)


_RECIPE = case("q", Q7, "qlora", 2048, 2)
_EXPANDABLE_LONG = case("q", Q3, "lora", 8192, 1)
_EXPANDABLE_FULL = case("q", Q05, "full", 2048, 4, ckpt=False)
_LIGER = case("q", Q7, "lora", 4096, 2)
_LIGER_Q = case("q", L8, "qlora", 8192, 1)
QUESTIONS: tuple[Case, ...] = (
    # QLoRA: peft's prepare_model_for_kbit_training (fp32 embeddings/lm_head/norms) vs LLaMA-Factory's recipe
    *_pair(_RECIPE, "peft", "llamafactory", recipe="llamafactory"),
    # reserved - allocated with and without expandable segments
    *_pair(_EXPANDABLE_LONG, "expandable", "default-alloc", env=NO_EXPANDABLE),
    *_pair(_EXPANDABLE_FULL, "expandable", "default-alloc", env=NO_EXPANDABLE),
    # Liger Kernel on vs off, everything else equal
    *_pair(_LIGER, "no-liger", "liger", train={"use_liger_kernel": True}),
    *_pair(_LIGER_Q, "no-liger", "liger", train={"use_liger_kernel": True}),
    # a few-layer MoE in 4-bit (transformers 5 fused experts): measured vs the analytic MoE model
    Case("q-qwen3-30b-a3b-4l-qlora-r16-s2048-b2-ckpt", "Qwen3-30B-A3B",
         case("q", "Qwen3-30B-A3B", "qlora", 2048, 2).train, group="questions", layers=4),
    Case("q-mixtral-8x7b-2l-lora-r16-s2048-b1-ckpt", "Mixtral-8x7B-v0.1",
         case("q", "Mixtral-8x7B-v0.1", "lora", 2048, 1).train, group="questions", layers=2),
)
# One configuration measured alone (nothing else on the card) and again beside other cases.
ISOLATION = case("iso", Q05, "qlora", 1024, 2)

# CPU smoke runs (CI): the same code path on tiny models in seconds.
SMOKE_CALIBRATION: tuple[Case, ...] = (
    case("cal", "tiny", "lora", 64, 1, steps=2),
    case("cal", "tiny", "full", 128, 2, ckpt=False, steps=2),
    case("cal", "tiny-llama", "lora", 96, 2, ckpt=False, steps=2),
    case("cal", "tiny-llama", "full-amp", 64, 1, steps=2),
)
SMOKE_ACCURACY: tuple[Case, ...] = (
    case("acc", "tiny", "lora", 128, 2, ckpt=False, rank=8, steps=2),
    case("acc", "tiny-llama", "full", 64, 2, steps=2),
    case("acc", "tiny-llama", "lora", 192, 1, steps=2),
)

SETS: dict[str, tuple[Case, ...]] = {
    "calibration": CALIBRATION, "accuracy": ACCURACY,
    "smoke-calibration": SMOKE_CALIBRATION, "smoke-accuracy": SMOKE_ACCURACY, "questions": QUESTIONS,
}


def select(cases: tuple[Case, ...], *, models: list[str] | None = None, names: list[str] | None = None
           ) -> list[Case]:
    """Filter by model names (case-insensitive; "tiny" also selects tiny-llama) and/or case-name substrings."""
    out = list(cases)
    if models:
        wanted = {m.lower() for m in models}
        out = [c for c in out if c.model.lower() in wanted or c.model.lower().split("-")[0] in wanted]
    if names:
        out = [c for c in out if any(n in c.name for n in names)]
    return out
