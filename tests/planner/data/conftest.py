"""Small real tokenizers trained here (no downloads), saved as model folders that the planner and
transformers both load: tokenizer.json + tokenizer_config.json with a ChatML-like chat template."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import spec_for, train
from tokenizers import Regex, pre_tokenizers

from planner.data.fastcount import QWEN2_PATTERN
from planner.model.spec import ModelSpec


@pytest.fixture(scope="session")
def bpe_folder(tmp_path_factory) -> Path:
    """Byte-level BPE with Qwen2's split pattern: the layout the fast counting path reproduces."""
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return train(tmp_path_factory.mktemp("bpe-model"), pre, byte_level=True)


@pytest.fixture(scope="session")
def metaspace_folder(tmp_path_factory) -> Path:
    """SentencePiece-style BPE (Metaspace): counted by the tokenizer itself, no fast path."""
    return train(tmp_path_factory.mktemp("metaspace-model"), pre_tokenizers.Metaspace(), byte_level=False)


@pytest.fixture
def bpe_spec(bpe_folder) -> ModelSpec:
    return spec_for(bpe_folder)


