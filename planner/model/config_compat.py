"""config.json files as transformers 4.x and 5.x write them, and multimodal wrappers, read one way.

transformers 5 renamed or moved a few keys: Mixtral-style MoE configs write `num_local_experts` where
4.x Qwen-MoE wrote `num_experts` (and 5.x Qwen3-MoE writes `num_local_experts` too), `dtype` replaced
`torch_dtype`, `rope_parameters` (with `rope_theta` inside) replaced `rope_theta` + `rope_scaling`, and
sliding-window layouts are spelled out in `layer_types`. Image-text models (Gemma 3, Llama 4, Qwen2.5-VL,
Mistral 3) keep the language model's config under `text_config` next to a `vision_config`.

    >>> lm, wrapper = language_config({"model_type": "mistral3", "text_config": {"model_type": "mistral", ...},
    ...                                "vision_config": {...}})
    >>> lm["model_type"], wrapper
    ('mistral', 'mistral3')
"""

from __future__ import annotations

from typing import Any

# Keys of the wrapper that describe the checkpoint as a whole and apply to its language model too.
_INHERITED = ("torch_dtype", "dtype", "tie_word_embeddings")

# Image-text wrappers written in the transformers 4.x layout (language keys at the top level, no
# text_config): the model_type transformers 5 gives their language model.
_FLAT_TEXT_TYPES = {"qwen2_vl": "qwen2_vl_text", "qwen2_5_vl": "qwen2_5_vl_text"}


def language_config(config: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(the language model's config.json keys, the multimodal wrapper's model_type or None)."""
    wrapper = config.get("model_type")
    text = config.get("text_config")
    if isinstance(text, dict) and text:
        lm = dict(text)
        for key in _INHERITED:
            # the wrapper's value wins for tying (transformers 5 ties through the top-level config)
            if key in config and (key == "tie_word_embeddings" or key not in lm):
                lm[key] = config[key]
        if not lm.get("model_type"):
            lm["model_type"] = f"{wrapper}_text"
        return normalize_keys(lm), wrapper
    if "vision_config" in config and wrapper in _FLAT_TEXT_TYPES:
        lm = {k: v for k, v in config.items() if k != "vision_config"}
        lm["model_type"] = _FLAT_TEXT_TYPES[wrapper]
        return normalize_keys(lm), wrapper
    return normalize_keys(dict(config)), None


def normalize_keys(config: dict[str, Any]) -> dict[str, Any]:
    """Both spellings of the renamed keys, so readers of either find theirs (the file's values win)."""
    out = dict(config)
    if "num_experts" in out and "num_local_experts" not in out:
        out["num_local_experts"] = out["num_experts"]
    elif "num_local_experts" in out and "num_experts" not in out:
        out["num_experts"] = out["num_local_experts"]
    if "dtype" in out and "torch_dtype" not in out:
        out["torch_dtype"] = out["dtype"]
    rope = out.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" not in out and "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    return out

