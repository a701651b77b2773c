"""Llama (DeepSeek-R1-Distill-Llama-8B/70B): pre-norm decoder, GQA, SwiGLU, rotary (+ Llama-3 scaling)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from seekd.layers.activation import SiluAndMul
from seekd.layers.attention import Attention
from seekd.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from seekd.layers.forward_context import ForwardContext
from seekd.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from seekd.layers.norms import RMSNorm
from seekd.layers.rotary import RotaryEmbedding, get_rope
from seekd.models.hf_config import HFConfig
from seekd.models.weights import load_named_weights


def build_rope(config: HFConfig) -> RotaryEmbedding:
    """One table for all layers: a per-layer float32 copy costs 64 MiB per layer at 128K positions
    (1.8 GiB for a 28-layer 7B)."""
    head_dim = config.get("head_dim", config.hidden_size // config.num_attention_heads)
    return get_rope(head_dim, head_dim, config.max_position_embeddings, config)


class LlamaAttention(nn.Module):
    def __init__(self, config: HFConfig, qkv_bias: bool, o_bias: bool, rotary_emb: RotaryEmbedding) -> None:
        super().__init__()
        num_heads = config.num_attention_heads
        num_kv_heads = config.get("num_key_value_heads", num_heads)
        head_dim = config.get("head_dim", config.hidden_size // num_heads)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, head_dim, num_heads, num_kv_heads, qkv_bias)
        self.o_proj = RowParallelLinear(num_heads * head_dim, config.hidden_size, o_bias)
        self.rotary_emb = rotary_emb
        self.attn = Attention(self.qkv_proj.num_heads, head_dim, head_dim**-0.5, self.qkv_proj.num_kv_heads)

    def forward(
        self,
        positions: torch.Tensor,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        norm: RMSNorm,
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention over norm(x + residual), and the new residual: the norm goes through the qkv
        projection's forward_normed, which may fold it into its product."""
        qkv, residual = self.qkv_proj.forward_normed(x, residual, norm)
        return self.o_proj(self.attn.forward_packed(positions, qkv, self.rotary_emb, ctx)), residual


class LlamaMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, bias)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias)
        self.down_proj.gated_input = True
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj.forward_gated(self.gate_up_proj(x), self.act_fn)

    def forward_normed(
        self, x: torch.Tensor, residual: torch.Tensor, norm: RMSNorm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """self(norm(x + residual)) and the new residual; see forward_normed of the linear."""
        gate_up, residual = self.gate_up_proj.forward_normed(x, residual, norm)
        return self.down_proj.forward_gated(gate_up, self.act_fn), residual


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: HFConfig, qkv_bias: bool, o_bias: bool, rotary_emb: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, qkv_bias, o_bias, rotary_emb)
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size, bool(config.get("mlp_bias", False)))
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # both norms run through the projections after them (forward_normed), which may fold them in
        self.self_attn.qkv_proj.normed_input = True
        self.mlp.gate_up_proj.normed_input = True

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, ctx: ForwardContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.self_attn(positions, x, residual, self.input_layernorm, ctx)
        return self.mlp.forward_normed(x, residual, self.post_attention_layernorm)


class LlamaModel(nn.Module):
    def __init__(self, config: HFConfig, qkv_bias: bool, o_bias: bool) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        rotary_emb = build_rope(config)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, qkv_bias, o_bias, rotary_emb) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: ForwardContext,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`inputs_embeds` replaces the token embeddings (a vision model's merged image features)."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        residual = None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, ctx)
        x, _ = self.norm(x, residual)
        return x


class LlamaForCausalLM(nn.Module):
    # checkpoint name part -> (fused parameter name part, shard id)
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }
    qkv_bias = False

    def __init__(self, config: HFConfig) -> None:
        super().__init__()
        self.config = config
        attention_bias = bool(config.get("attention_bias", False))
        o_bias = attention_bias and not self.qkv_bias
        self.model = LlamaModel(config, self.qkv_bias or attention_bias, o_bias)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        self.tie_word_embeddings = bool(config.get("tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        return self.model(input_ids, positions, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn.attn for layer in self.model.layers]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip = ("rotary_emb.inv_freq",)
        if self.tie_word_embeddings:
            skip = (*skip, "lm_head.weight")
        return load_named_weights(self, weights, self.packed_modules_mapping, skip)
