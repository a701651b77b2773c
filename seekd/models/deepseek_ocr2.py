"""DeepSeek-OCR 2: each view of an image (a 1024 px global view and up to six 768 px tiles) runs
through a SAM ViT-B with its neck, two stride-2 convolutions (16x fewer patches), a Qwen2-style
query encoder whose learned queries read the patches, and a linear projector; an image's features
are its tiles', then the global view's, then a learned view separator. They replace the image
tokens' embeddings in a DeepSeek-V2 MoE language model with plain multi-head attention.

Checkpoint names are DeepSeek's own (`model.sam_model.blocks.*`, `model.qwen2_model.*`,
`model.projector.*`, `model.view_seperator`), as transformers also writes them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from seekd.layers.attention import Attention
from seekd.layers.embedding import ParallelLMHead
from seekd.layers.forward_context import ForwardContext
from seekd.layers.linear import QKVParallelLinear, RowParallelLinear
from seekd.layers.moe import expert_weight_target
from seekd.layers.rotary import RotaryEmbedding, get_rope
from seekd.layers.vision.query_encoder import QueryEncoder
from seekd.layers.vision.sam import SamVisionEncoder, StridedConvs
from seekd.models.deepseek_v2 import DeepseekV2Model
from seekd.models.deepseek_vl import merge_image_features
from seekd.models.hf_config import HFConfig
from seekd.models.llama import LlamaForCausalLM
from seekd.models.weights import load_named_weights

# transformers' DeepseekOcr2SamVisionConfig defaults (SAM ViT-B at 1024 px)
SAM_DEFAULTS = dict(
    hidden_size=768,
    output_channels=256,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=1024,
    patch_size=16,
    window_size=14,
    global_attn_indexes=[2, 5, 8, 11],
    downsample_channels=[512, 896],
)

# transformers' DeepseekOcr2TextConfig defaults a hand-written config.json may leave out
TEXT_DEFAULTS = dict(rms_norm_eps=1e-6, max_position_embeddings=2048, n_shared_experts=2, routed_scaling_factor=1.0)

_NECK = ("conv1", "layer_norm1", "conv2", "layer_norm2")  # the neck's Sequential indices 0-3
# DeepSeek's checkpoint names (after `model.`) -> this module's
_RENAMES = [
    (re.compile(r"^sam_model\.blocks\.(\d+)\.norm([12])\."), r"sam_model.layers.\1.layer_norm\2."),
    (re.compile(r"^sam_model\.blocks\."), "sam_model.layers."),
    (re.compile(r"^sam_model\.patch_embed\.proj\."), "sam_model.patch_embed.projection."),
    (re.compile(r"^sam_model\.neck\.([0-3])\."), lambda m: f"sam_model.neck.{_NECK[int(m[1])]}."),
    (re.compile(r"^sam_model\.net_([23])\."), lambda m: f"sam_downsample.conv{int(m[1]) - 1}."),
    (re.compile(r"^qwen2_model\.model\.model\."), "query_encoder."),
    (re.compile(r"^qwen2_model\.query_"), "query_encoder.query_"),
    (re.compile(r"^projector\.layers\."), "projector."),
    (re.compile(r"^view_seperator$"), "view_separator"),
]
_VISION_PREFIXES = ("sam_model.", "sam_downsample.", "query_encoder.", "projector.", "view_separator")


def sam_config(config: dict) -> dict:
    sam = {**SAM_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
    sam.setdefault("mlp_dim", int(sam["hidden_size"] * sam.get("mlp_ratio", 4.0)))
    return sam


class MultiHeadAttention(nn.Module):
    """Rotary multi-head attention (the Llama kind) with the V2 decoder layer's call signature."""

    def __init__(self, config: HFConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        num_heads = config.num_attention_heads
        num_kv_heads = config.get("num_key_value_heads", num_heads)
        head_dim = config.hidden_size // num_heads
        bias = bool(config.get("attention_bias", False))
        self.qkv_proj = QKVParallelLinear(config.hidden_size, head_dim, num_heads, num_kv_heads, bias)
        self.o_proj = RowParallelLinear(num_heads * head_dim, config.hidden_size, bias)
        self.rotary_emb = rotary
        self.attn = Attention(self.qkv_proj.num_heads, head_dim, head_dim**-0.5, self.qkv_proj.num_kv_heads)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.o_proj(self.attn.forward_packed(positions, self.qkv_proj(x), self.rotary_emb, ctx))


def build_mha_rope(config: HFConfig) -> RotaryEmbedding:
    head_dim = config.hidden_size // config.num_attention_heads
    return get_rope(head_dim, head_dim, config.max_position_embeddings, config)


class DeepseekOcr2ForConditionalGeneration(nn.Module):
    """transformers' DeepseekOcr2ForConditionalGeneration."""

    # image inputs by name, in the order `encode_images` takes them
    image_input_names: tuple[str, ...] = ("pixel_values", "pixel_values_local")
    packed_modules_mapping = LlamaForCausalLM.packed_modules_mapping

    def __init__(self, config: HFConfig) -> None:
        super().__init__()
        self.config = config
        text = HFConfig({**TEXT_DEFAULTS, **config.text_config})
        self.text_config = text
        vision = dict(config.vision_config)
        sam = sam_config(dict(vision.get("sam_config") or {}))
        encoder = dict(vision["encoder_config"])
        self.image_token_id = int(config.get("image_token_id", 128815))
        self.model = DeepseekV2Model(text, "softmax", "greedy", MultiHeadAttention, build_mha_rope)
        self.sam_model = SamVisionEncoder(sam)
        self.sam_downsample = StridedConvs(sam["output_channels"], *sam["downsample_channels"])
        self.query_encoder = QueryEncoder(encoder)
        self.projector = nn.Linear(encoder["hidden_size"], text.hidden_size)
        self.view_separator = nn.Parameter(torch.zeros(text.hidden_size))
        self.lm_head = ParallelLMHead(text.vocab_size, text.hidden_size)
        self.tie_word_embeddings = bool(config.get("tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def encode_views(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] views of one size -> [N, queries, hidden] language-model inputs."""
        grid, _ = self.sam_model(pixels, keep_layers=False)
        patches = self.sam_downsample(grid).flatten(2).transpose(1, 2)
        return self.projector(self.query_encoder(patches))

    def encode_images(self, pixel_values: torch.Tensor, pixel_values_local: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] global views and [B, n, 3, T, T] tiles (n alike in a batch, maybe 0) ->
        [B, n * tile queries + global queries + 1, hidden]."""
        b, n = pixel_values_local.shape[:2]
        parts = []
        if n:
            tiles = self.encode_views(pixel_values_local.flatten(0, 1))
            parts.append(tiles.reshape(b, n * tiles.shape[1], -1))
        glob = self.encode_views(pixel_values)
        parts += [glob, self.view_separator.to(glob.dtype).expand(b, 1, -1)]
        return torch.cat(parts, dim=1)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        embeds = merge_image_features(self.model.embed_tokens(input_ids), ctx)
        return self.model(input_ids, positions, ctx, inputs_embeds=embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn.attn for layer in self.model.layers]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip = ("rotary_emb.inv_freq", "lm_head.weight") if self.tie_word_embeddings else ("rotary_emb.inv_freq",)
        return load_named_weights(
            self,
            _checkpoint_names(weights),
            self.packed_modules_mapping,
            skip,
            remap=lambda name: (name, None) if name.startswith(_VISION_PREFIXES) else expert_weight_target(name),
        )


def _rename(name: str) -> str:
    for pattern, replacement in _RENAMES:
        if pattern.match(name):
            return pattern.sub(replacement, name, count=1)
    return name


def _checkpoint_names(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """The language model keeps its `model.` prefix (our `model` is the DeepSeek-V2 stack); the
    vision parts, also under `model.`, move to their modules here."""
    for name, tensor in weights:
        inner = name.removeprefix("model.")
        renamed = _rename(inner)
        yield (renamed if renamed != inner or inner.startswith(_VISION_PREFIXES) else name), tensor
