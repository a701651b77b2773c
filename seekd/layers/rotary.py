"""Rotary position embeddings with Llama-3, linear and YaRN (DeepSeek) scaling.

The cos/sin table is built once for every position up to the model's context length and indexed
by each token's absolute position, so prefill chunks and decodes need no special cases.
Two layouts: neox (rotate the two halves of the rotary dims) and interleaved (GPT-J pairs
(x0, x1), (x2, x3), ..., which DeepSeek V2/V3 use).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from seekd.layers.build_scope import build_kernels


def rope_parameters(hf_config: Any) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either the classic `rope_theta`/`rope_scaling` fields or the newer
    `rope_parameters` dict."""
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        theta = float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(getattr(hf_config, "rope_theta", 10000.0) or 10000.0)
        scaling = dict(getattr(hf_config, "rope_scaling", None) or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    scaling["rope_type"] = kind
    return theta, scaling


def yarn_get_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature correction for a context extended `factor` times."""
    if factor <= 1:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def yarn_softmax_scale(scale: float, scaling: dict[str, Any] | None) -> float:
    """DeepSeek multiplies the softmax scale by mscale(factor, mscale_all_dim)² under YaRN."""
    mscale_all_dim = (scaling or {}).get("mscale_all_dim")
    if not mscale_all_dim:
        return scale
    return scale * yarn_get_mscale(scaling["factor"], mscale_all_dim) ** 2


def _yarn_inv_freq(
    inv_freq: torch.Tensor, rotary_dim: int, base: float, max_position: int, scaling: dict[str, Any]
) -> tuple[torch.Tensor, float]:
    """YaRN: interpolate low frequencies, keep high ones, ramp in between; returns (inv_freq, the
    factor applied to cos/sin)."""
    if "original_max_position_embeddings" not in scaling:
        raise ValueError("YaRN rope scaling needs original_max_position_embeddings in config.json")
    old_len = scaling["original_max_position_embeddings"]
    factor = scaling.get("factor") or max_position / old_len
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return rotary_dim * math.log(old_len / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp
    inv_freq = (inv_freq / factor) * (1 - extrapolate) + inv_freq * extrapolate
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_get_mscale(factor)
    return inv_freq, float(attention_factor)


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    def __init__(
        self,
        head_dim: int,
        rotary_dim: int,
        max_position: int,
        base: float,
        scaling: dict[str, Any] | None = None,
        interleaved: bool = False,
        *,
        use_kernel: bool | None = None,
    ) -> None:
        """`use_kernel`: the fused Triton kernel; unset = the model's KernelChoice."""
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.interleaved = interleaved
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))
        kind = (scaling or {}).get("rope_type", "default")
        attention_factor = 1.0
        if kind in ("yarn", "deepseek_yarn"):
            inv_freq, attention_factor = _yarn_inv_freq(inv_freq, rotary_dim, base, max_position, scaling)
        elif kind == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)
        elif kind == "linear":
            inv_freq = inv_freq / scaling["factor"]
        elif kind != "default":
            raise ValueError(f"rope scaling {kind!r} is not supported by this model")
        freqs = torch.outer(torch.arange(max_position, dtype=torch.float), inv_freq)
        cos_sin = torch.cat([freqs.cos(), freqs.sin()], dim=-1) * attention_factor
        self.register_buffer("cos_sin_cache", cos_sin, persistent=False)
        self.use_kernel = build_kernels().rotary if use_kernel is None else use_kernel

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, heads, head_dim], k: [T, kv_heads, head_dim]."""
        if self.interleaved:
            q, k = deinterleave(q, self.rotary_dim), deinterleave(k, self.rotary_dim)
        if self.use_kernel:
            from seekd.kernels.rotary import rotary

            return (
                rotary(q, positions, self.cos_sin_cache, self.rotary_dim),
                rotary(k, positions, self.cos_sin_cache, self.rotary_dim),
            )
        cos, sin = self.cos_sin_cache[positions].chunk(2, dim=-1)
        return apply_rotary(q, cos, sin, self.rotary_dim), apply_rotary(k, cos, sin, self.rotary_dim)


def deinterleave(x: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Reorder GPT-J pairs (x0, x1), (x2, x3), ... into halves (x0, x2, ..., x1, x3, ...), so the neox
    rotation applies. Queries and keys get the same permutation, so their dot products are those of
    the interleaved rotation (and transformers' DeepSeek-V3 returns this same layout)."""
    rot = x[..., :rotary_dim]
    rot = torch.cat([rot[..., 0::2], rot[..., 1::2]], dim=-1)
    return torch.cat([rot, x[..., rotary_dim:]], dim=-1) if x.size(-1) > rotary_dim else rot


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    """Rotate the first `rotary_dim` features of each head, neox layout (halves, not pairs)."""
    cos = cos.unsqueeze(-2)
    sin = sin.unsqueeze(-2)
    rot, passthrough = x[..., :rotary_dim], x[..., rotary_dim:]
    x1, x2 = rot.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
    return torch.cat([out, passthrough], dim=-1) if passthrough.numel() else out


def get_rope(
    head_dim: int, rotary_dim: int, max_position: int, hf_config: Any, interleaved: bool = False
) -> RotaryEmbedding:
    base, scaling = rope_parameters(hf_config)
    return RotaryEmbedding(head_dim, rotary_dim, max_position, base, scaling, interleaved)


def apply_interleaved_rotary_tail(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V4 rope: rotate GPT-J pairs of the *last* 2 * cos.size(-1) features of each head, in
    place of the layout (V4's key is also its value, so features must not be permuted).
    x: [T, heads, D]; cos/sin: [T, rope_dim // 2]; pass -sin to undo the rotation."""
    rope_dim = 2 * cos.size(-1)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    rot = x[..., -rope_dim:].float()
    x0, x1 = rot[..., 0::2], rot[..., 1::2]
    rotated = torch.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1).flatten(-2).to(x.dtype)
    return torch.cat([x[..., :-rope_dim], rotated], dim=-1)
