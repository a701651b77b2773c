"""silu(gate) * up: over a fused gate-up projection in one kernel, and in registers (`swiglu`) where
the fused MoE kernels finish their gate-up products."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o, d, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + d + cols, mask=mask, other=0.0)
    silu = (gate / (1.0 + tl.exp(-gate))).to(up.dtype)  # the reference rounds silu before the product
    # products in fp32, rounded once: what a native bf16 multiply gives, and what Triton's CPU
    # interpreter (which tests run through) computes correctly
    out = silu.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    rows, two_d = x.shape
    d = two_d // 2
    out = torch.empty((rows, d), dtype=x.dtype, device=x.device)
    block = 1024
    _silu_and_mul_kernel[(rows, triton.cdiv(d, block))](x, out, x.stride(0), out.stride(0), d, BLOCK=block)
    return out


@triton.jit
def swiglu(acc_gate, acc_up, swiglu_limit, dtype: tl.constexpr, HAS_LIMIT: tl.constexpr):
    """silu(gate) * up from fp32 accumulators, rounded as the reference rounds: the projections in
    the model dtype, then silu, then the product (with V4's clipping in between)."""
    gate = acc_gate.to(dtype).to(tl.float32)
    up = acc_up.to(dtype).to(tl.float32)
    if HAS_LIMIT:
        gate = tl.minimum(gate, swiglu_limit)
        up = tl.minimum(tl.maximum(up, -swiglu_limit), swiglu_limit)
    silu = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    return (silu * up).to(dtype)
