"""Liger Kernel and a model: which architectures it patches, and the patch's name (written once).

    >>> liger_supports(spec), liger_patch_name(spec)
    (True, 'apply_liger_kernel_to_qwen2')
"""

from __future__ import annotations

from planner.model.spec import ModelSpec

# The transformers model types Liger Kernel patches and the planner counts on (liger_kernel/transformers/
# monkey_patch.py MODEL_TYPE_TO_APPLY_LIGER_FN, v0.8); remote-code families (baichuan, internlm2) are not
# among them: their modeling code is not transformers' and Liger's class patches do not reach it.
LIGER_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma2",
                               "glm4", "phi3"})


def liger_supports(spec: ModelSpec) -> bool:
    """Whether the plan may count on Liger's kernels for this model (no import: Triton is slow to load)."""
    return spec.model_type in LIGER_MODEL_TYPES


def liger_patch_name(spec: ModelSpec) -> str:
    """The liger_kernel.transformers function that patches this architecture: image-text checkpoints as
    their wrapper (apply_liger_kernel_to_qwen2_5_vl), remote-code families as the type they are counted as."""
    return f"apply_liger_kernel_to_{spec.multimodal or spec.arch.counted_as or spec.model_type}"
