"""SigLIP vision transformer (DeepSeek-VL's low-resolution encoder): patch convolution, learned
absolute positions, pre-norm encoder layers with bidirectional attention, a final LayerNorm.

Plain torch modules: the encoder runs once per image at prefill, batched over the step's images,
and its matmuls are large enough that cuBLAS and SDPA are the fast path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# config.json `hidden_act` -> activation of the vision MLPs
ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": lambda: _QuickGELU(),
}


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"vision hidden_act {name!r} is not supported; seekd runs {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class VisionAttention(nn.Module):
    """Multi-head self-attention over all patches of an image (no mask, no cache)."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.num_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class VisionMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.act = activation(act)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        d, eps = config["hidden_size"], config.get("layer_norm_eps", 1e-6)
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.self_attn = VisionAttention(d, config["num_attention_heads"])
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = VisionMLP(d, config["intermediate_size"], config.get("hidden_act", "gelu_pytorch_tanh"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEmbeddings(nn.Module):
    def __init__(self, config: dict) -> None:
        super().__init__()
        d, patch = config["hidden_size"], config["patch_size"]
        self.patch_embedding = nn.Conv2d(config.get("num_channels", 3), d, kernel_size=patch, stride=patch)
        self.position_embedding = nn.Embedding((config["image_size"] // patch) ** 2, d)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        return patches.flatten(2).transpose(1, 2) + self.position_embedding.weight


class SiglipVisionModel(nn.Module):
    """[B, 3, S, S] pixels -> [B, (S / patch)^2, hidden] features after the final LayerNorm. The
    checkpoint's attention-pooling head is not part of it: DeepSeek-VL reads the patch features."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.embeddings = SiglipEmbeddings(config)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(SiglipEncoderLayer(config) for _ in range(config["num_hidden_layers"]))
        self.post_layernorm = nn.LayerNorm(config["hidden_size"], eps=config.get("layer_norm_eps", 1e-6))

    @property
    def num_patches(self) -> int:
        return self.embeddings.position_embedding.num_embeddings

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(pixel_values)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)
