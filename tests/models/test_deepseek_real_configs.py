"""The published DeepSeek configs build the right architecture (on the meta device: shapes only)."""

from __future__ import annotations

import math

import pytest
import torch

from seekd.layers.moe import SparseMoE
from seekd.models.hf_config import HFConfig
from seekd.models.loader import fp8_block_size
from seekd.models.registry import model_class

V3 = {  # deepseek-ai/DeepSeek-V3 and DeepSeek-R1 config.json (fields that shape the model)
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "attention_bias": False,
    "first_k_dense_replace": 3,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 8,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 128,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 128,
    "num_nextn_predict_layers": 1,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-06,
    "quantization_config": {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": [128, 128],
    },
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "tie_word_embeddings": False,
    "topk_group": 4,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "v_head_dim": 128,
    "vocab_size": 129280,
}

V2_LITE = {  # deepseek-ai/DeepSeek-V2-Lite
    "architectures": ["DeepseekV2ForCausalLM"],
    "model_type": "deepseek_v2",
    "attention_bias": False,
    "first_k_dense_replace": 1,
    "hidden_size": 2048,
    "intermediate_size": 10944,
    "kv_lora_rank": 512,
    "max_position_embeddings": 163840,
    "moe_intermediate_size": 1408,
    "moe_layer_freq": 1,
    "n_group": 1,
    "n_routed_experts": 64,
    "n_shared_experts": 2,
    "norm_topk_prob": False,
    "num_attention_heads": 16,
    "num_experts_per_tok": 6,
    "num_hidden_layers": 27,
    "num_key_value_heads": 16,
    "q_lora_rank": None,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 0.707,
        "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 1.0,
    "scoring_func": "softmax",
    "tie_word_embeddings": False,
    "topk_group": 1,
    "topk_method": "greedy",
    "torch_dtype": "bfloat16",
    "v_head_dim": 128,
    "vocab_size": 102400,
}


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
