"""The built-in vision demo `seekd-demo-vl-random`: DeepSeek-VL's hybrid architecture (the 7B's
SigLIP low-resolution and SAM high-resolution branches, hybrid aligner, Llama language model) at a
miniature size, with RANDOM weights and DeepSeek's real tokenizer, whose `<｜image｜>` token is the
image placeholder. `seekd serve --model seekd-demo-vl-random` answers image parts with no download;
its text is gibberish by construction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seekd.models.demo import (
    DEEPSEEK_CHAT_TEMPLATE,
    V4_VOCAB_SIZE,
    ensure_built_folder,
    write_deepseek_tokenizer,
    write_generation_config,
)

VL_DEMO_NAME = "seekd-demo-vl-random"
VL_DEMO_VERSION = "1"
VL_DEMO_IMAGE_TOKEN_ID = 129279  # <｜image｜> in DeepSeek's tokenizer


def vl_demo_hf_config(vocab_size: int = V4_VOCAB_SIZE) -> dict[str, Any]:
    """transformers' DeepseekVLHybridConfig names. A 128 px SigLIP view in 16 px patches gives 64
    image tokens (a repeated image fills whole prefix-cache blocks); the 256 px SAM view runs 4x4
    windows with two global layers, as the 7B's does with 14x14 windows."""
    return {
        "architectures": ["DeepseekVLHybridForConditionalGeneration"],
        "model_type": "deepseek_vl_hybrid",
        "image_token_id": VL_DEMO_IMAGE_TOKEN_ID,
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "bos_token_id": 0,
            "eos_token_id": 1,
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 128,
            "patch_size": 16,
            "hidden_act": "gelu_pytorch_tanh",
        },
        "high_res_vision_config": {
            "model_type": "sam_vision_model",
            "hidden_size": 32,
            "output_channels": 16,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "image_size": 256,
            "patch_size": 16,
            "window_size": 4,
            "global_attn_indexes": [1, 3],
            "mlp_dim": 64,
        },
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
    }


def ensure_vl_demo_model(data_dir: Path) -> Path:
    """Write (once) the vision demo's folder under the data dir and return it (weights: dummy)."""
    return ensure_built_folder(data_dir / "models" / VL_DEMO_NAME, VL_DEMO_VERSION, write_vl_demo_files)


def write_vl_demo_files(folder: Path) -> None:
    vocab_size = write_deepseek_tokenizer(folder, DEEPSEEK_CHAT_TEMPLATE, 4096)
    (folder / "config.json").write_text(json.dumps(vl_demo_hf_config(vocab_size), indent=1))
    write_generation_config(folder)
    (folder / "README.md").write_text(
        f"{VL_DEMO_NAME}: a tiny DeepSeek-VL (hybrid) model with RANDOM weights (generated at load time)\n"
        "and DeepSeek's real tokenizer. It reads images and answers gibberish by design: it is meant for\n"
        "trying seekd's image path, not for answers.\n"
    )
