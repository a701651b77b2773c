"""Weight-only int8 with one scale per output row: the CPU format of host-resident routed experts.

torch ships a CPU kernel for it (`aten._weight_int8pack_mm`, AVX-512 / AVX2): bf16 activations times
int8 weights, the row scale applied to the product. On the 2-core dev machine (Xeon, AVX-512) an R1
expert's [4096, 7168] gate/up product took 12 ms at 1 token, 12 ms at 8 and 80 ms at 64 this way,
against 12 / 44 / 152 ms for a bf16 copy and 430-500 ms for dequantizing its FP8 codes per call
(benchmarks/results/cpu_expert_kernels.json).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

INT8_MAX = 127.0
INT8PACK_K_MULTIPLE = 16  # the int8 kernel reads 16 input columns at a time; others give garbage or crash


def quantize_int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float weight [N, K] -> (codes int8 [N, K], scale float32 [N]), real = code * scale, each row's
    largest magnitude mapped to 127."""
    weight = weight.float()
    scale = weight.abs().amax(dim=1).clamp(min=1e-10) / INT8_MAX
    codes = (weight / scale[:, None]).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, scale


def dequantize_int8_rows(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (codes.float() * scale.float()[:, None]).to(dtype)


def int8_rows_linear(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ (codes * scale)^T -> [M, N] in x's dtype, with bf16 activations (the int8 kernel's fast
    case; float32 activations run several times slower there)."""
    xb = x.to(torch.bfloat16)
    if codes.shape[1] % INT8PACK_K_MULTIPLE == 0:
        out = torch.ops.aten._weight_int8pack_mm(xb, codes, scale.to(torch.bfloat16))
    else:
        out = F.linear(xb, dequantize_int8_rows(codes, scale, torch.bfloat16))
    return out.to(x.dtype)
