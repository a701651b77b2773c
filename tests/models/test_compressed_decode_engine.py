"""DeepSeek-V4's decode kernels (window + compressed entries with the sink, CSA's indexer scored and
selected on the GPU) in a whole tiny engine against the torch reference engine: identical greedy tokens
in float32, through decode steps that close compressed blocks of both rates."""

from __future__ import annotations

import pytest
from models.test_deepseek_v4 import V4_ENGINE_PROMPTS, save_tiny_v4
from models.test_mla_decode_engine import assert_backends_agree

from seekd.layers.compressed_attention import CompressedAttention

pytestmark = pytest.mark.triton


def test_v4_decode_kernels_generate_the_reference_tokens(kernel_device, tmp_path):
    save_tiny_v4(tmp_path / "model")
    # 275-token prompts decode 14 tokens past entries of 4 (CSA) and 16 (HCA) tokens; 13 tokens: a
    # window not yet full, no HCA entry; 3 tokens: no entry at all
    prompts = [*V4_ENGINE_PROMPTS[:2], V4_ENGINE_PROMPTS[3], [5, 6, 7]]
    assert_backends_agree(tmp_path / "model", kernel_device, prompts, 14, 128, CompressedAttention)
