"""FP8 KV-cache entries: float8_e4m3fn codes with one float32 scale per row segment, and the torch
reference of writing and reading them.

Why a scale per token (per cache slot, per KV head or latent segment) computed when the entry is
written: it needs no calibration data, every entry uses the whole e4m3 range whatever its magnitude
(DeepSeek's latents are far from unit scale; a per-tensor scale of 1 loses their small values), and a
token's scales live in its own slot beside its codes, so prefix caching, preemption and sliding windows
need nothing new. A scale is amax / 448 (e4m3's largest finite value); the Triton cache writers compute
the same codes (seekd/kernels/kv_fp8.py) and the attention kernels dequantize them in registers.

A segment is a run of the last dimension quantized together: one K or V head of a GQA entry; the
c_kv and k_pe parts of an MLA latent (the rope part has its own magnitude); V3.2's indexer key.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
KV_CACHE_DTYPES = ("auto", "fp8")


def is_fp8_kv_cache(kv_cache_dtype: str) -> bool:
    """`auto` keeps the model's dtype; `fp8` stores float8_e4m3fn codes with float32 scales."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, not {kv_cache_dtype!r}")
    return kv_cache_dtype == "fp8"


def _per_value(scales: torch.Tensor, widths: tuple[int, ...]) -> torch.Tensor:
    """[..., len(widths)] scales -> [..., sum(widths)]: each segment's scale under each of its values."""
    if len(widths) == 1:
        return scales
    return scales.repeat_interleave(torch.tensor(widths, device=scales.device), dim=-1)


def quantize(x: torch.Tensor, widths: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., W] -> (codes [..., W] float8_e4m3fn, scales [..., len(widths)] float32), one scale per
    segment of `widths` (default: the whole row). An all-zero segment gets scale 0 and zero codes."""
    widths = widths or (x.shape[-1],)
    xf = x.float()
    amax = torch.stack([part.abs().amax(dim=-1) for part in xf.split(widths, dim=-1)], dim=-1)
    scales = amax / FP8_MAX
    divisor = _per_value(torch.where(scales > 0, scales, 1.0), widths)
    codes = (xf / divisor).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return codes, scales


def dequantize(
    codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype, widths: tuple[int, ...] | None = None
) -> torch.Tensor:
    """The inverse of `quantize`, rounded once into `dtype` (as the kernels do in registers)."""
    widths = widths or (codes.shape[-1],)
    return (codes.float() * _per_value(scales, widths)).to(dtype)
