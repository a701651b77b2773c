"""The published DeepSeek configs build the right architecture (on the meta device: shapes only)."""

from __future__ import annotations

import math

import pytest
import torch

from seekd.layers.moe import SparseMoE
from seekd.models.hf_config import HFConfig
from seekd.models.loader import fp8_block_size
from seekd.models.published_configs import V2_LITE, V3
from seekd.models.registry import model_class


@pytest.mark.parametrize(("config", "billions", "moe_layers"), [(V3, 671, 58), (V2_LITE, 15.7, 26)])
def test_published_configs_build_the_published_model(config, billions, moe_layers):
    """Parameter count (V3: 671B, i.e. its 685B checkpoint less the 14B MTP module; V2-Lite: 15.7B),
    MoE layout, latent cache and the YaRN-corrected softmax scale."""
    hf_config = HFConfig(config)
    with torch.device("meta"):
        model = model_class(hf_config.architecture)(hf_config)
    num_params = sum(p.numel() for p in model.parameters())
    assert num_params / 1e9 == pytest.approx(billions, rel=0.01)
    layers = model.model.layers
    assert sum(isinstance(layer.mlp, SparseMoE) for layer in layers) == moe_layers
    attn = model.attention_layers()[0]
    assert attn.kv_cache_spec(torch.bfloat16).entry_shape == (576,)
    mscale = 0.1 * config["rope_scaling"]["mscale_all_dim"] * math.log(40) + 1
    assert attn.scale == pytest.approx(192**-0.5 * mscale**2)
    assert layers[-1].mlp.gate.topk_method == config["topk_method"]


def test_v3_checkpoint_is_read_as_128x128_block_fp8():
    assert fp8_block_size(HFConfig(V3)) == (128, 128)
    assert fp8_block_size(HFConfig(V2_LITE)) is None
