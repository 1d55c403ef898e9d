"""Every decoder-only type of transformers' own causal-LM mapping plans with exact parameter counts.

Walks MODEL_FOR_CAUSAL_LM_MAPPING_NAMES (less encoder and encoder-decoder types, runner.generic.causal_types),
builds each type's default config on the meta device with transformers alone, writes it as config.json and
resolves it the way `plan --model DIR` does (the analytic model when the family has one, else the generic
path). Skipped types are listed with their reason (`pytest -rs`): the default config transformers itself
cannot build, or an image-text wrapper whose language model has no causal-LM class of its own.
"""

from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")


def _types() -> list[str]:
    from runner.generic import causal_types

    return sorted(causal_types())


def _default_build(model_type: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        cfg = AutoConfig.for_model(model_type)
    except Exception as exc:
        pytest.skip(f"{model_type}: transformers rejects its own default config ({type(exc).__name__}: "
                    f"{str(exc)[:120]})")
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            # image-text types: the whole checkpoint, vision tower included (what training loads)
            image_text = model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
            model = (AutoModelForImageTextToText if image_text else AutoModelForCausalLM).from_config(cfg)
    except Exception as exc:
        pytest.skip(f"{model_type}: its default config does not build on the meta device "
                    f"({type(exc).__name__}: {str(exc)[:120]})")
    return cfg, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_type", _types())
def test_default_config_plans_exactly(model_type, tmp_path):
    from planner.model.config_compat import language_config
    from planner.model.params import count_params
    from planner.model.resolve import resolve_model
    from runner.generic import causal_types

    cfg, total = _default_build(model_type)
    config = cfg.to_dict()
    lm, wrapper = language_config(config)
    if wrapper and lm["model_type"] not in causal_types():
        pytest.skip(f"{model_type}: image-text wrapper whose language model ({lm['model_type']}) has no "
                    "causal-LM class of its own; not planned yet")
    (tmp_path / "config.json").write_text(json.dumps(config, default=str))
    spec = resolve_model(str(tmp_path))
    counts = count_params(spec)
    assert counts.total + spec.vision_params == total, (model_type, counts, spec.vision_params)
    if spec.generic is not None:
        assert sum(spec.generic.count.values()) == counts.total
        assert len(spec.generic.layer_kinds) == spec.num_layers
