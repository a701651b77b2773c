"""Tiny random transformers DeepSeek-VL models (plain and hybrid) saved like real checkpoints, and
prompts with image placeholders built from real Pillow images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from parity import randomize_weights
from PIL import Image

from seekd.engine.multimodal import ImageInput, image_input
from seekd.models.vision_processing import image_processor_for

IMAGE_TOKEN_ID = 383
TEXT = dict(
    model_type="llama",
    vocab_size=384,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    bos_token_id=0,
    eos_token_id=1,
)
# 32 px at 8 px patches: 16 image tokens
SIGLIP = dict(
    model_type="siglip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)
# 64 px at 8 px patches: an 8x8 grid in 3x3 windows (padded to 9x9), layer 1 global
SAM = dict(
    model_type="sam_vision_model",
    hidden_size=32,
    output_channels=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=64,
    patch_size=8,
    window_size=3,
    global_attn_indexes=[1],
    mlp_dim=64,
)


def save_tiny_vl(kind: str, folder: Path) -> torch.nn.Module:
    """`kind` plain or hybrid; every weight random (norms, positions and SAM's alpha included)."""
    import transformers

    common = dict(text_config=TEXT, vision_config=SIGLIP, image_token_id=IMAGE_TOKEN_ID)
    if kind == "plain":
        config = transformers.DeepseekVLConfig(**common)
        cls = transformers.DeepseekVLForConditionalGeneration
    else:
        config = transformers.DeepseekVLHybridConfig(**common, high_res_vision_config=SAM)
        cls = transformers.DeepseekVLHybridForConditionalGeneration
    torch.manual_seed(1234)
    model = cls(config).float().eval()
    randomize_weights(model)
    model.save_pretrained(folder)
    return model


# DeepSeek-OCR 2 in miniature: a 64 px global view and 48 px tiles in 4 px SAM patches (16x16 and 12x12
# grids, 4x4 windows, layer 1 global), 16 or 9 patches after the two stride-2 convolutions, 144
# queries per view either way (the count the real model uses for its 768 px tiles); the language
# model a DeepSeek-V2 MoE (a dense layer, then 4 routed experts top-2 plus a shared one) with GQA
OCR2_SAM = dict(
    hidden_size=32,
    output_channels=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=64,
    patch_size=4,
    window_size=4,
    global_attn_indexes=[1],
    mlp_dim=64,
    downsample_channels=[24, 32],
)
OCR2_ENCODER = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
OCR2_TEXT = dict(
    vocab_size=384,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    n_routed_experts=4,
    num_experts_per_tok=2,
    n_shared_experts=1,
    moe_intermediate_size=32,
    routed_scaling_factor=1.5,
    mlp_layer_types=["dense", "sparse"],
    bos_token_id=0,
    eos_token_id=1,
)
OCR2_PREPROCESSOR = dict(size={"height": 64, "width": 64}, tile_size=48, min_patches=2, max_patches=6)


def save_tiny_ocr2(folder: Path) -> torch.nn.Module:
    """Every weight random, saved under DeepSeek's checkpoint names as transformers writes them, with
    a preprocessor_config.json for the miniature sizes."""
    import json

    import transformers

    config = transformers.DeepseekOcr2Config(
        vision_config=dict(sam_config=OCR2_SAM, encoder_config=OCR2_ENCODER),
        text_config=OCR2_TEXT,
        image_token_id=IMAGE_TOKEN_ID,
    )
    torch.manual_seed(4321)
    model = transformers.DeepseekOcr2ForConditionalGeneration(config).float().eval()
    randomize_weights(model)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(OCR2_PREPROCESSOR))
    return model


def random_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def image_prompt(
    folder: Path, texts: list[list[int]], images: list[Image.Image]
) -> tuple[list[int], list[ImageInput], dict[str, np.ndarray]]:
    """texts[0] image[0] texts[1] image[1] ... texts[-1]: token ids with each image's placeholder
    tokens, its engine inputs, and the stacked pixel arrays (for the transformers reference)."""
    processor = image_processor_for(folder)
    ids: list[int] = []
    inputs, arrays = [], {}
    for i, text in enumerate(texts):
        ids += text
        if i < len(images):
            processed = processor.process(images[i])
            inputs.append(image_input(len(ids), processed.num_tokens, processed.content_hash(), processed.arrays))
            for name, a in processed.arrays.items():
                arrays.setdefault(name, []).append(a)
            ids += [IMAGE_TOKEN_ID] * processed.num_tokens
    return ids, inputs, {name: np.stack(a) for name, a in arrays.items()}
