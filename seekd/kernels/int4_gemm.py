"""W4A16 products: activations in bf16/fp16 times group-wise INT4 weights decoded in registers.

Weights come as seekd's INT4 layout (seekd.layers.quantization.int4): qweight int32 [K/8, N] with
eight input rows of one column per word, float16 scales and uint8 zero points [K/G, N]. Every code
minus its zero point is a small integer, exact in bf16, so a tile's product is taken on the tensor
cores with integer-valued weights and scaled per column afterwards, in fp32: the only rounding is
the bf16 product's own. A K-tile never straddles two groups (BLOCK_K divides the group size).

At batch 1 a GEMM tile wastes most of its rows, so `int4_gemv` streams the words once with CUDA
cores, eight codes at a time, and `pick_int4_gemv` chooses between it and the GEMM by timing at
start-up. Act-order weights take x[:, perm] first (the caller's job: one gather).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from seekd.kernels.gemv import fastest

PACK = 8


@dataclass(frozen=True)
class Int4GemmConfig:
    block_m: int
    block_n: int
    block_k: int  # a multiple of 16 that divides the group size
    num_warps: int = 4
    num_stages: int = 3

    @property
    def name(self) -> str:
        return f"int4gemm_m{self.block_m}_n{self.block_n}_k{self.block_k}_w{self.num_warps}_s{self.num_stages}"


@dataclass(frozen=True)
class Int4GemvConfig:
    block_n: int  # output columns per program (contiguous in memory: one word per column and row)
    block_kw: int  # words (8 input rows each) per tile; each word row finds its own group
    num_warps: int
    num_stages: int = 3

    @property
    def name(self) -> str:
        return f"int4gemv_n{self.block_n}_kw{self.block_kw}_w{self.num_warps}_s{self.num_stages}"


INT4_GEMV_CANDIDATES = (
    Int4GemvConfig(64, 16, 4),
    Int4GemvConfig(128, 16, 4),
    Int4GemvConfig(64, 8, 4),
    Int4GemvConfig(128, 8, 4, 4),
    Int4GemvConfig(256, 8, 8),
    Int4GemvConfig(32, 16, 2),
)


def _tile_k(group_size: int, preferred: int) -> int:
    """The largest of preferred, preferred/2, ... (at least 16) that divides the group size."""
    block = preferred
    while block > 16 and group_size % block:
        block //= 2
    if group_size % block:
        raise ValueError(f"group size {group_size} is not a multiple of 16")
    return block


def pick_int4_gemm_config(m: int, n: int, group_size: int) -> Int4GemmConfig:
    if m <= 16:
        return Int4GemmConfig(16, 64, _tile_k(group_size, 128), num_warps=4, num_stages=4)
    if m <= 64:
        return Int4GemmConfig(64, 64, _tile_k(group_size, 64), num_warps=4, num_stages=3)
    return Int4GemmConfig(128, 128, _tile_k(group_size, 64), num_warps=8, num_stages=3)


@triton.jit
def _w4a16_gemm_kernel(
    a_ptr,
    qw_ptr,
    s_ptr,
    z_ptr,
    bias_ptr,
    out_ptr,
    m,
    n,
    k,
    group_size,
    stride_am,
    stride_om,
    IEEE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < m
    col_mask = cols < n
    shifts = (tl.arange(0, BLOCK_K) % 8) * 4
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for start in range(0, k, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        k_mask = ks < k
        a = tl.load(
            a_ptr + rows[:, None].to(tl.int64) * stride_am + ks[None, :],
            mask=row_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        words = tl.load(
            qw_ptr + (ks // 8)[:, None].to(tl.int64) * n + cols[None, :],
            mask=k_mask[:, None] & col_mask[None, :],
            other=0,
        )
        group = start // group_size
        scale = tl.load(s_ptr + group * n + cols, mask=col_mask, other=0.0).to(tl.float32)
        zero = tl.load(z_ptr + group * n + cols, mask=col_mask, other=0).to(tl.int32)
        w = ((words >> shifts[:, None]) & 0xF) - zero[None, :]
        w = w.to(a.dtype)
        if IEEE:  # float32 activations (the interpreter's tests): exact products
            part = tl.dot(a, w, input_precision="ieee")
        else:
            part = tl.dot(a, w)
        acc += part * scale[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _w4a16_gemv_kernel(
    x_ptr,
    qw_ptr,
    s_ptr,
    z_ptr,
    bias_ptr,
    out_ptr,
    n,
    num_words,
    words_per_group,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_KW: tl.constexpr,
):
    # sum_k (q - z) * s * x = s * (sum_k q * x - z * sum_k x) over each group: the zero point and the
    # scale are applied once per word row and column, not once per code
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n
    acc = tl.zeros([BLOCK_KW, BLOCK_N], tl.float32)
    for start in range(0, num_words, BLOCK_KW):
        words = start + tl.arange(0, BLOCK_KW)
        word_mask = words < num_words
        mask = word_mask[:, None] & col_mask[None, :]
        w = tl.load(qw_ptr + words[:, None].to(tl.int64) * n + cols[None, :], mask=mask, other=0)
        groups = words // words_per_group
        scale = tl.load(s_ptr + groups[:, None] * n + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        zero = tl.load(z_ptr + groups[:, None] * n + cols[None, :], mask=mask, other=0).to(tl.float32)
        dot = tl.zeros([BLOCK_KW, BLOCK_N], tl.float32)
        x_sum = tl.zeros([BLOCK_KW], tl.float32)
        for j in tl.static_range(8):
            xj = tl.load(x_ptr + words * 8 + j, mask=word_mask, other=0.0).to(tl.float32)
            dot += ((w >> (4 * j)) & 0xF).to(tl.float32) * xj[:, None]
            x_sum += xj
        acc += (dot - zero * x_sum[:, None]) * scale
    out = tl.sum(acc, axis=0)
    if HAS_BIAS:
        out += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + cols, out.to(out_ptr.dtype.element_ty), mask=col_mask)


def _check(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bias
) -> tuple[int, int, int]:
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or not qweight.is_contiguous():
        raise ValueError(
            f"qweight must be a contiguous int32 [K/8, N] tensor, got {qweight.dtype} {tuple(qweight.shape)}"
        )
    k, n = qweight.shape[0] * PACK, qweight.shape[1]
    groups = scales.shape[0]
    if groups < 1 or k % groups or scales.shape != (groups, n) or zeros.shape != (groups, n):
        raise ValueError(f"scales {tuple(scales.shape)} and zeros {tuple(zeros.shape)} do not fit a [{k}, {n}] weight")
    if not (scales.is_contiguous() and zeros.is_contiguous() and zeros.dtype == torch.uint8):
        raise ValueError("scales and zeros must be contiguous; zeros uint8")
    if x.shape[-1] != k:
        raise ValueError(f"activations have {x.shape[-1]} features; the weight expects {k}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    return n, k, k // groups


def w4a16_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    config: Int4GemmConfig | None = None,
) -> torch.Tensor:
    """x [..., K] times the INT4 weight -> [..., N] in x's dtype with fp32 accumulation (rows of x
    already in the weight's stored order)."""
    n, k, group_size = _check(x, qweight, scales, zeros, bias)
    lead = x.shape[:-1]
    x = x.reshape(-1, k)
    if x.stride(1) != 1:
        x = x.contiguous()
    m = x.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out.reshape(*lead, n)
    config = config or pick_int4_gemm_config(m, n, group_size)
    if group_size % config.block_k:
        raise ValueError(f"block_k {config.block_k} must divide the group size {group_size}")
    grid = (triton.cdiv(m, config.block_m), triton.cdiv(n, config.block_n))
    _w4a16_gemm_kernel[grid](
        x,
        qweight,
        scales,
        zeros,
        bias if bias is not None else scales,
        out,
        m,
        n,
        k,
        group_size,
        x.stride(0),
        out.stride(0),
        IEEE=x.dtype == torch.float32,
        HAS_BIAS=bias is not None,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out.reshape(*lead, n)


def int4_gemv(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bias: torch.Tensor | None,
    config: Int4GemvConfig,
) -> torch.Tensor:
    """One token's product with an INT4 weight: x [1, K] -> [1, N], each weight word read once."""
    n, k, group_size = _check(x, qweight, scales, zeros, bias)
    if x.shape != (1, k):
        raise ValueError(f"the batch-1 product takes x of shape (1, {k}), got {tuple(x.shape)}")
    x = x.contiguous()
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _w4a16_gemv_kernel[(triton.cdiv(n, config.block_n),)](
        x,
        qweight,
        scales,
        zeros,
        bias if bias is not None else scales,
        out,
        n,
        k // PACK,
        group_size // PACK,
        HAS_BIAS=bias is not None,
        BLOCK_N=config.block_n,
        BLOCK_KW=config.block_kw,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out


def pick_int4_gemv(
    layers: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]],
    dtype: torch.dtype = torch.bfloat16,
    reps: int = 5,
) -> tuple[Int4GemvConfig | None, dict[str, float]]:
    """The fastest batch-1 product for every INT4 weight (qweight, scales, zeros, bias) of one shape,
    timed over all of them in turn as decode reads them: None means the GEMM at M=1 is at least as
    fast. Returns the choice and the ms per pass for each option tried. CUDA only (graph replay)."""
    qweight = layers[0][0]
    k = qweight.shape[0] * PACK
    x = torch.randn(1, k, dtype=dtype, device=qweight.device)

    def run(config: Int4GemvConfig | None):
        def one_pass() -> None:
            for qw, s, z, b in layers:
                if config is None:
                    w4a16_matmul(x, qw, s, z, b)
                else:
                    int4_gemv(x, qw, s, z, b, config)

        return one_pass

    return fastest(run, "w4a16_matmul", reps, INT4_GEMV_CANDIDATES)
