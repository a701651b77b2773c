"""A decoder-only transformer (Qwen2 layers: GQA with q/k/v biases, rotary, SwiGLU, RMSNorm) used as
an image encoder, as DeepSeek-OCR 2 does: image patch tokens followed by learned query tokens, the
patches attending to each other in both directions and the queries causally to everything before
them. The queries' outputs are the image's features, so their count (not the patch grid) sets the
number of image tokens: one learned query set per resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seekd.layers.norms import RMSNorm
from seekd.layers.rotary import RotaryEmbedding


class QueryEncoderAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, num_heads * self.head_dim)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * self.head_dim)
        self.o_proj = nn.Linear(num_heads * self.head_dim, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rotary: RotaryEmbedding, mask: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, n, self.num_kv_heads, self.head_dim)
        q, k = rotary(torch.arange(n, device=x.device), q, k)
        repeat = self.num_heads // self.num_kv_heads
        k, v = (t.transpose(1, 2).repeat_interleave(repeat, dim=1) for t in (k, v))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))


class QueryEncoderMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class QueryEncoderLayer(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        d, eps = config["hidden_size"], config.get("rms_norm_eps", 1e-6)
        heads = config["num_attention_heads"]
        self.input_layernorm = RMSNorm(d, eps, use_kernel=False)
        self.self_attn = QueryEncoderAttention(d, heads, config.get("num_key_value_heads") or heads)
        self.post_attention_layernorm = RMSNorm(d, eps, use_kernel=False)
        self.mlp = QueryEncoderMLP(d, config["intermediate_size"])

    def forward(self, x: torch.Tensor, rotary: RotaryEmbedding, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rotary, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


def patches_then_queries_mask(num_patches: int, length: int, device: torch.device) -> torch.Tensor:
    """[length, length] True where attention is allowed: causal, and patch to patch both ways."""
    pos = torch.arange(length, device=device)
    causal = pos[None, :] <= pos[:, None]
    patches = pos < num_patches
    return causal | (patches[:, None] & patches[None, :])


class QueryEncoder(nn.Module):
    """[B, P, D] patch features -> [B, Q, D] query features; Q = 144 learned queries for grids of up
    to 144 patches (DeepSeek-OCR 2's 768 px tiles), else 256 (its 1024 px global view)."""

    QUERY_COUNTS = (144, 256)

    def __init__(self, config: dict) -> None:
        super().__init__()
        d = config["hidden_size"]
        self.layers = nn.ModuleList(QueryEncoderLayer(config) for _ in range(config["num_hidden_layers"]))
        self.norm = RMSNorm(d, config.get("rms_norm_eps", 1e-6), use_kernel=False)
        self.query_768 = nn.Embedding(self.QUERY_COUNTS[0], d)
        self.query_1024 = nn.Embedding(self.QUERY_COUNTS[1], d)
        theta = (config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0))
        head_dim = d // config["num_attention_heads"]
        max_position = config.get("max_position_embeddings", 32768)
        self.rotary = RotaryEmbedding(head_dim, head_dim, max_position, float(theta), use_kernel=False)

    @classmethod
    def num_queries(cls, num_patches: int) -> int:
        return cls.QUERY_COUNTS[0] if num_patches <= cls.QUERY_COUNTS[0] else cls.QUERY_COUNTS[1]

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, p, _ = patches.shape
        queries = (self.query_768 if self.num_queries(p) == self.QUERY_COUNTS[0] else self.query_1024).weight
        x = torch.cat([patches, queries.to(patches.dtype).expand(b, -1, -1)], dim=1)
        mask = patches_then_queries_mask(p, x.shape[1], x.device)
        for layer in self.layers:
            x = layer(x, self.rotary, mask)
        return self.norm(x[:, p:])
