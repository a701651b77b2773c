"""DeepSeek-VL: a SigLIP image encoder (plus, in the hybrid 7B, a high-resolution SAM branch), an
MLP aligner into the language model's embedding space, and a Llama language model whose embeddings
at the image-token positions are replaced by the image features.

The engine calls `encode_images` at prefill (batched over the step's images) and hands the features
with their flat rows to `forward` through the forward context; text-only steps never touch the
vision modules."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from seekd.layers.embedding import ParallelLMHead
from seekd.layers.forward_context import ForwardContext
from seekd.layers.vision.sam import SamNeck, SamVisionEncoder, StridedConvs
from seekd.layers.vision.siglip import SiglipVisionModel
from seekd.models.hf_config import HFConfig
from seekd.models.llama import LlamaForCausalLM, LlamaModel
from seekd.models.weights import load_named_weights

_VISION_PREFIXES = ("vision_model.", "aligner.", "high_res_vision_")


def merge_image_features(embeds: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """Token embeddings with the rows of image tokens replaced by their image features."""
    if ctx.image_features is None:
        return embeds
    rows, features = ctx.image_features
    return embeds.index_copy(0, rows, features.to(embeds.dtype))


class MlpAligner(nn.Module):
    """Plain DeepSeek-VL: vision features -> Linear, GELU, Linear -> the language model's width."""

    def __init__(self, vision_size: int, text_size: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(vision_size, text_size)
        self.linear2 = nn.Linear(text_size, text_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear2(F.gelu(self.linear1(features)))


class HybridAligner(nn.Module):
    """Hybrid DeepSeek-VL: each branch projected to half the width, concatenated (high-res first),
    GELU, then one Linear."""

    def __init__(self, vision_size: int, high_res_size: int, text_size: int) -> None:
        super().__init__()
        self.vision_proj = nn.Linear(vision_size, text_size // 2)
        self.high_res_vision_proj = nn.Linear(high_res_size, text_size // 2)
        self.proj = nn.Linear(text_size, text_size)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        both = torch.cat([self.high_res_vision_proj(high), self.vision_proj(low)], dim=-1)
        return self.proj(F.gelu(both))


class SamDownsample(StridedConvs):
    """High-res feature map -> the low-res branch's token grid: bilinear resize to 4x the grid, then
    two stride-2 3x3 convolutions (channels x2, x2)."""

    def __init__(self, channels: int, grid: int) -> None:
        super().__init__(channels, 2 * channels, 4 * channels)
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(4 * self.grid, 4 * self.grid), mode="bilinear", align_corners=False)
        return super().forward(x)


class DeepseekVLForConditionalGeneration(nn.Module):
    """transformers' DeepseekVLForConditionalGeneration (deepseek-vl-1.3b-chat layout)."""

    # image inputs by name, in the order `encode_images` takes them
    image_input_names: tuple[str, ...] = ("pixel_values",)

    def __init__(self, config: HFConfig) -> None:
        super().__init__()
        self.config = config
        text = HFConfig(config.text_config)
        self.text_config = text
        self.vision_config = dict(config.vision_config)
        self.image_token_id = int(config.get("image_token_id", 100015))
        self.vision_model = SiglipVisionModel(self.vision_config)
        self._build_aligner(text.hidden_size)
        attention_bias = bool(text.get("attention_bias", False))
        self.language_model = LlamaModel(text, attention_bias, attention_bias)
        self.lm_head = ParallelLMHead(text.vocab_size, text.hidden_size)
        self.tie_word_embeddings = bool(config.get("tie_word_embeddings", True))
        if self.tie_word_embeddings:
            self.lm_head.weight = self.language_model.embed_tokens.weight

    def _build_aligner(self, text_size: int) -> None:
        self.aligner = MlpAligner(self.vision_config["hidden_size"], text_size)

    @property
    def num_image_tokens(self) -> int:
        return self.vision_model.num_patches

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] preprocessed images -> [N, num_image_tokens, hidden] language-model inputs."""
        return self.aligner(self.vision_model(pixel_values))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        embeds = merge_image_features(self.language_model.embed_tokens(input_ids), ctx)
        return self.language_model(input_ids, positions, ctx, inputs_embeds=embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def attention_layers(self) -> list:
        return [layer.self_attn.attn for layer in self.language_model.layers]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip = ("rotary_emb.inv_freq", "lm_head.weight") if self.tie_word_embeddings else ("rotary_emb.inv_freq",)
        return load_named_weights(
            self,
            _checkpoint_names(weights),
            LlamaForCausalLM.packed_modules_mapping,
            skip,
            remap=lambda name: (name, None) if name.startswith(_VISION_PREFIXES) else None,
        )


def _checkpoint_names(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """transformers nests everything but the LM head under `model.`; SigLIP's attention-pooling head
    is never used by DeepSeek-VL and is dropped."""
    for name, tensor in weights:
        name = name.removeprefix("model.")
        if name.startswith("vision_model.head."):
            continue
        yield name, tensor


class DeepseekVLHybridForConditionalGeneration(DeepseekVLForConditionalGeneration):
    """transformers' DeepseekVLHybridForConditionalGeneration (deepseek-vl-7b-chat layout): the
    SigLIP branch at low resolution plus a SAM branch at high resolution, whose last-layer and
    first-global-layer features (the latter through its own neck, scaled by a learned alpha) are
    resampled to the SigLIP token grid."""

    image_input_names = ("pixel_values", "high_res_pixel_values")

    def _build_aligner(self, text_size: int) -> None:
        sam = dict(self.config.high_res_vision_config)
        grid = self.vision_config["image_size"] // self.vision_config["patch_size"]
        self.global_attn_index = int(sam["global_attn_indexes"][0])
        self.high_res_vision_model = nn.Module()
        self.high_res_vision_model.vision_encoder = SamVisionEncoder(sam)
        self.high_res_vision_neck = SamNeck(sam["hidden_size"], sam["output_channels"])
        self.high_res_vision_proj = SamDownsample(sam["output_channels"], grid)
        self.high_res_vision_alpha = nn.Parameter(torch.zeros(1))
        self.aligner = HybridAligner(self.vision_config["hidden_size"], 4 * sam["output_channels"], text_size)

    def encode_images(self, pixel_values: torch.Tensor, high_res_pixel_values: torch.Tensor) -> torch.Tensor:
        low = self.vision_model(pixel_values)
        last, per_layer = self.high_res_vision_model.vision_encoder(high_res_pixel_values)
        global_features = self.high_res_vision_proj(self.high_res_vision_neck(per_layer[self.global_attn_index]))
        high = self.high_res_vision_proj(last) + global_features * self.high_res_vision_alpha
        return self.aligner(low, high.flatten(2).transpose(1, 2))
