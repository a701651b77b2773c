"""Checkpoint-like low-bit weights for tests: DeepSeek's quantizers (V3's block FP8 with amax/448
scales, V4's power-of-two FP8 and FP4), routed experts quantized with them, and the MoE their
dequantized weights compute (seekd's dequantize-on-load reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seekd.kernels.expert_weights import ExpertWeights
from seekd.layers.moe import RoutedExperts
from seekd.layers.quantization import FP4_E2M1_VALUES, dequantize_block_fp8, dequantize_fp4

FP4_MAGNITUDES = torch.tensor(FP4_E2M1_VALUES[:8])
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max
FP8_BLOCK = (128, 128)


def pow2_scale(amax: torch.Tensor, max_code: float) -> torch.Tensor:
    """DeepSeek's ue8m0 scales: the power of two at or above amax / max_code."""
    return torch.exp2(torch.ceil(torch.log2(amax.clamp(min=1e-30) / max_code)))


def quantize_fp4(w: torch.Tensor, swap_nibbles: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] -> packed int8 [out, in/2] (low nibble = even column) and e8m0 scales [out, in/32]."""
    rows, cols = w.shape
    blocks = w.float().view(rows, cols // 32, 32)
    scale = pow2_scale(blocks.abs().amax(dim=-1), 6.0)
    x = (blocks / scale[..., None]).clamp(-6, 6)
    magnitude = (x.abs()[..., None] - FP4_MAGNITUDES.to(w.device)).abs().argmin(dim=-1)
    codes = (magnitude | ((x < 0) & (magnitude > 0)).long() << 3).view(rows, cols).to(torch.uint8)
    low, high = (codes[:, 1::2], codes[:, 0::2]) if swap_nibbles else (codes[:, 0::2], codes[:, 1::2])
    return (low | high << 4).view(torch.int8), scale.to(torch.float8_e8m0fnu)


def _quantize_fp8_blocks(w: torch.Tensor, block: int, pow2: bool) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = w.shape
    nr, nc = -(-rows // block), -(-cols // block)
    padded = F.pad(w.float(), (0, nc * block - cols, 0, nr * block - rows)).view(nr, block, nc, block)
    amax = padded.abs().amax(dim=(1, 3))
    scale = pow2_scale(amax, FP8_MAX) if pow2 else amax.clamp(min=1e-12) / FP8_MAX
    q = (padded / scale[:, None, :, None]).to(torch.float8_e4m3fn).view(nr * block, nc * block)
    return q[:rows, :cols].contiguous(), scale


def quantize_fp8_pow2(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """V4's FP8: 128x128 blocks with power-of-two scales, stored as e8m0."""
    q, scale = _quantize_fp8_blocks(w, block, pow2=True)
    return q, scale.to(torch.float8_e8m0fnu)


def quantize_fp8_block(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """V3/R1's FP8: 128x128 blocks, each scaled so its largest weight lands on 448; float32
    `weight_scale_inv` (real = code * scale)."""
    return _quantize_fp8_blocks(w, block, pow2=False)


def quantize_experts(w13: torch.Tensor, w2: torch.Tensor, fmt: str) -> ExpertWeights:
    """Stacked float experts (w13 [E, 2I, H], w2 [E, H, I]) in `fmt`, one expert at a time; FP4
    scales as the uint8 exponent bytes the kernels read."""
    if fmt == "dense":
        return ExpertWeights(w13, w2)
    quantize = quantize_fp8_block if fmt == "fp8_block" else quantize_fp4
    parts = [[quantize(w[e]) for e in range(w.shape[0])] for w in (w13, w2)]
    codes = [torch.stack([q for q, _ in part]) for part in parts]
    scales = [torch.stack([s for _, s in part]) for part in parts]
    if fmt == "fp4":
        codes = [c.view(torch.uint8) for c in codes]
        scales = [s.view(torch.uint8) for s in scales]
    return ExpertWeights(codes[0], codes[1], scales[0], scales[1], fmt)


def dequantize_expert(experts: ExpertWeights, expert: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """One expert's (w13, w2) through seekd's dequantize-on-load functions."""
    if experts.format == "dense":
        return experts.w13[expert].to(dtype), experts.w2[expert].to(dtype)
    out = []
    for w, s in ((experts.w13, experts.w13_scale), (experts.w2, experts.w2_scale)):
        if experts.format == "fp8_block":
            out.append(dequantize_block_fp8(w[expert], s[expert], FP8_BLOCK, dtype))
        else:
            out.append(dequantize_fp4(w[expert], s[expert].view(torch.float8_e8m0fnu), dtype))
    return out[0], out[1]


def dequantized_moe(
    x: torch.Tensor,
    experts: ExpertWeights,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    swiglu_limit: float | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """RoutedExperts' reference loop over the experts dequantized to `dtype`, one active expert at a
    time (a full-size model's experts in float32 would not fit beside their low-bit copy)."""
    x = x.to(dtype)
    out = torch.zeros_like(x)
    one = RoutedExperts(1, experts.hidden_size, experts.intermediate_size, swiglu_limit).to(x.device, dtype)
    for expert in topk_ids.unique().tolist():
        token_idx, slot = (topk_ids == expert).nonzero(as_tuple=True)
        one.w13_weight.data[0], one.w2_weight.data[0] = dequantize_expert(experts, expert, dtype)
        ids = torch.zeros_like(token_idx)[:, None]
        out.index_add_(0, token_idx, one(x[token_idx], topk_weights[token_idx, slot, None], ids))
    return out
