"""config.json of the published full-size DeepSeek models (the fields that shape the model), for
memory plans, benchmarks and tests that build them on the meta device. Nothing here is downloaded."""

from __future__ import annotations

from typing import Any

CSA, HCA = "compressed_sparse_attention", "heavily_compressed_attention"
V4_FLASH_LAYERS, V4_PRO_LAYERS, V4_HASH_LAYERS = 43, 61, 3
FP8_BLOCKS = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}

V3: dict[str, Any] = {  # deepseek-ai/DeepSeek-V3 and DeepSeek-R1
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

V2_LITE: dict[str, Any] = {  # deepseek-ai/DeepSeek-V2-Lite
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


# deepseek-ai/DeepSeek-V3.2: V3 plus the lightning indexer that picks 2,048 entries per query
V3_2: dict[str, Any] = {
    **V3,
    "architectures": ["DeepseekV32ForCausalLM"],
    "model_type": "deepseek_v32",
    "index_n_heads": 64,
    "index_head_dim": 128,
    "index_topk": 2048,
}

# deepseek-ai/DeepSeek-V4-Flash config.json (the fields that shape the model), as transformers'
# DeepseekV4Config defaults give it; the attention schedule is HCA, HCA, then CSA/HCA alternating.
V4_FLASH: dict[str, Any] = {
    "architectures": ["DeepseekV4ForCausalLM"],
    "model_type": "deepseek_v4",
    "vocab_size": 129280,
    "hidden_size": 4096,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": V4_FLASH_LAYERS,
    "num_attention_heads": 64,
    "num_key_value_heads": 1,
    "head_dim": 512,
    "q_lora_rank": 1024,
    "num_experts_per_tok": 6,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "scoring_func": "sqrtsoftplus",
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.5,
    "max_position_embeddings": 1048576,
    "rope_theta": 10000.0,
    "layer_types": [HCA, HCA] + [CSA if i % 2 else HCA for i in range(2, V4_FLASH_LAYERS)],
    "mlp_layer_types": ["hash_moe"] * V4_HASH_LAYERS + ["moe"] * (V4_FLASH_LAYERS - V4_HASH_LAYERS),
    "compress_rates": {CSA: 4, HCA: 128},
    "compress_rope_theta": 160000.0,
    "hc_mult": 4,
    "hc_sinkhorn_iters": 20,
    "hc_eps": 1e-06,
    "swiglu_limit": 10.0,
    "sliding_window": 128,
    "o_groups": 8,
    "o_lora_rank": 1024,
    "index_n_heads": 64,
    "index_head_dim": 128,
    "index_topk": 512,
    "num_nextn_predict_layers": 1,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-06,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "tie_word_embeddings": False,
    "partial_rotary_factor": 0.125,
    "qk_rope_head_dim": 64,
    "torch_dtype": "bfloat16",
    "quantization_config": {**FP8_BLOCKS, "scale_fmt": "ue8m0"},  # FP8 attention and shared experts
    "expert_dtype": "fp4",  # routed experts in FP4 with a ue8m0 scale per 32 values
}


# deepseek-ai/DeepSeek-V4-Pro: the V4 architecture at 1.6T parameters (384 experts, 61 layers)
V4_PRO: dict[str, Any] = {
    **V4_FLASH,
    "hidden_size": 7168,
    "moe_intermediate_size": 3072,
    "num_hidden_layers": V4_PRO_LAYERS,
    "num_attention_heads": 128,
    "q_lora_rank": 1536,
    "n_routed_experts": 384,
    "routed_scaling_factor": 2.5,
    "o_groups": 16,
    "index_topk": 1024,
    "layer_types": [HCA, HCA] + [CSA if i % 2 else HCA for i in range(2, V4_PRO_LAYERS)],
    "mlp_layer_types": ["hash_moe"] * V4_HASH_LAYERS + ["moe"] * (V4_PRO_LAYERS - V4_HASH_LAYERS),
}

FULL_SIZE = {"DeepSeek-R1 / V3": V3, "DeepSeek-V3.2": V3_2, "DeepSeek-V4-Flash": V4_FLASH, "DeepSeek-V4-Pro": V4_PRO}


def _qwen2_distill(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, **extra: Any) -> dict:
    """deepseek-ai/DeepSeek-R1-Distill-Qwen-*: Qwen2.5 shapes, bf16, 128K positions."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
        "bos_token_id": 151646,
        "eos_token_id": 151643,
        "torch_dtype": "bfloat16",
        **extra,
    }


def _llama_distill(hidden: int, intermediate: int, layers: int, heads: int) -> dict:
    """deepseek-ai/DeepSeek-R1-Distill-Llama-*: Llama-3.1/3.3 shapes (Llama-3 rope scaling), bf16."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "torch_dtype": "bfloat16",
    }


# The distilled R1s (bf16 checkpoints), config.json as published (the fields that shape the model)
DISTILL = {
    "DeepSeek-R1-Distill-Qwen-1.5B": _qwen2_distill(1536, 8960, 28, 12, 2, vocab_size=151936),
    "DeepSeek-R1-Distill-Qwen-7B": _qwen2_distill(3584, 18944, 28, 28, 4),
    "DeepSeek-R1-Distill-Llama-8B": _llama_distill(4096, 14336, 32, 32),
    "DeepSeek-R1-Distill-Qwen-14B": _qwen2_distill(5120, 13824, 48, 40, 8, rope_theta=1000000.0, rms_norm_eps=1e-5),
    "DeepSeek-R1-Distill-Qwen-32B": _qwen2_distill(5120, 27648, 64, 40, 8, rope_theta=1000000.0, rms_norm_eps=1e-5),
    "DeepSeek-R1-Distill-Llama-70B": _llama_distill(8192, 28672, 80, 64),
}
