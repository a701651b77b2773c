"""Routed experts' weights as they sit in GPU memory, and how the fused MoE kernels read a tile of them.

Every format keeps one layout, w13 [E, 2I, H] (gate rows, then up rows) and w2 [E, H, I]:
- dense: bf16, fp16 or fp32 values.
- fp8_block: DeepSeek V3/R1's float8_e4m3fn codes with a float32 scale per 128x128 block (their
  `weight_scale_inv`, real = code * scale): w13_scale [E, ceil(2I/128), ceil(H/128)],
  w2_scale [E, ceil(H/128), ceil(I/128)].
- fp4: DeepSeek V4's e2m1 codes two to a byte, the low nibble the even column (w13 [E, 2I, H/2],
  w2 [E, H, I/2]), with one ue8m0 exponent byte (2**(s - 127)) per 32 columns: w13_scale [E, 2I, H/32],
  w2_scale [E, H, I/32].

Low-bit weights stay low-bit: the kernels decode each tile in registers (lowbit.py), so a step reads
one byte (FP8) or about half a byte (FP4) per weight. Two readers, one per path of the fused MoE:
- `dot_tile` + `scaled_dot` (blocked path): acc + x @ W[rows, K tile]^T as a bf16 (or fp32) tl.dot on
  the decoded codes, W8A16-style, so no FP8 tensor cores are needed (sm_80 runs it). An FP8 K tile lies
  inside one 128-column scale block (BLOCK_K <= 128), so the block scales multiply its partial product,
  one per output column; FP4 scales change every 32 columns, so they multiply the decoded weights
  before the dot (e2m1 times a power of two is exact in bf16).
- `expert_products` (one-token GEMVs): the fp32 products W[rows, k] * x[k] of a tile, shaped
  [rows, groups, group width] so that each group has one scale per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from seekd.kernels.lowbit import E2M1_DECODE_FACTOR, E4M3_DECODE_FACTOR, e2m1_to_f16, e4m3_to_f16, ue8m0_to_f32

WEIGHT_FORMATS = ("dense", "fp8_block", "fp4")
DENSE = tl.constexpr(0)  # the kernels' FORMAT constexpr: WEIGHT_FORMATS.index(format)
FP8_BLOCK = tl.constexpr(1)
FP4 = tl.constexpr(2)
FP8_SCALE_BLOCK = tl.constexpr(128)  # rows and columns sharing one FP8 scale
FP4_SCALE_GROUP = tl.constexpr(32)  # columns sharing one FP4 scale
_E4M3_FACTOR = tl.constexpr(E4M3_DECODE_FACTOR)
_E2M1_FACTOR = tl.constexpr(E2M1_DECODE_FACTOR)

_DENSE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_WEIGHT_DTYPES = {
    "dense": _DENSE_DTYPES,
    "fp8_block": (torch.float8_e4m3fn,),
    "fp4": (torch.uint8, torch.int8, torch.float4_e2m1fn_x2),  # packed bytes, however a checkpoint types them
}
_UE8M0_DTYPES = (torch.uint8, torch.float8_e8m0fnu)


@dataclass(frozen=True)
class ExpertWeights:
    """One layer's routed experts in one of WEIGHT_FORMATS (shapes and scales in the module docstring)."""

    w13: torch.Tensor
    w2: torch.Tensor
    w13_scale: torch.Tensor | None = None
    w2_scale: torch.Tensor | None = None
    format: str = "dense"

    def __post_init__(self) -> None:
        if self.format not in WEIGHT_FORMATS:
            raise ValueError(f"expert weight format must be one of {', '.join(WEIGHT_FORMATS)}, not {self.format!r}")
        if self.w13.dim() != 3 or self.w2.dim() != 3 or self.w13.shape[1] % 2:
            raise ValueError(
                f"expert weights must be w13 [E, 2I, H] and w2 [E, H, I]; got {tuple(self.w13.shape)} "
                f"and {tuple(self.w2.shape)}"
            )
        dtypes = _WEIGHT_DTYPES[self.format]
        if self.w13.dtype not in dtypes or self.w2.dtype not in dtypes or self.w13.dtype != self.w2.dtype:
            raise ValueError(
                f"{self.format} experts need w13 and w2 of one dtype among {', '.join(map(str, dtypes))}; "
                f"got {self.w13.dtype} and {self.w2.dtype}"
            )
        if self.w13.stride(2) != 1 or self.w2.stride(2) != 1:
            raise ValueError("expert weights must be contiguous along their last (input) dimension")
        num_experts, hidden, inter = self.num_experts, self.hidden_size, self.intermediate_size
        packed = 2 if self.format == "fp4" else 1
        if tuple(self.w2.shape) != (num_experts, hidden, inter // packed):
            raise ValueError(
                f"w2 has shape {tuple(self.w2.shape)}; a {self.format} w13 of shape {tuple(self.w13.shape)} "
                f"needs {(num_experts, hidden, inter // packed)}"
            )
        group = FP4_SCALE_GROUP.value
        if self.format == "fp4" and (hidden % group or inter % group):
            raise ValueError(
                f"fp4 experts need hidden ({hidden}) and intermediate ({inter}) sizes that are multiples of {group}"
            )
        self._check_scales()

    def _check_scales(self) -> None:
        if self.format == "dense":
            if self.w13_scale is not None or self.w2_scale is not None:
                raise ValueError("dense experts take no scales")
            return
        num_experts, hidden, inter = self.num_experts, self.hidden_size, self.intermediate_size
        if self.format == "fp8_block":
            block = FP8_SCALE_BLOCK.value
            rule, dtypes = f"one per {block}x{block} block", (torch.float32,)
            shapes = (
                (num_experts, triton.cdiv(2 * inter, block), triton.cdiv(hidden, block)),
                (num_experts, triton.cdiv(hidden, block), triton.cdiv(inter, block)),
            )
        else:
            group = FP4_SCALE_GROUP.value
            rule, dtypes = f"one per {group} columns", _UE8M0_DTYPES
            shapes = ((num_experts, 2 * inter, hidden // group), (num_experts, hidden, inter // group))
        for name, want in zip(("w13_scale", "w2_scale"), shapes):
            scale = getattr(self, name)
            if scale is None or scale.dtype not in dtypes or tuple(scale.shape) != want:
                got = "none" if scale is None else f"{scale.dtype} {tuple(scale.shape)}"
                raise ValueError(
                    f"{self.format} experts need {name} of shape {want} ({rule}) in {' or '.join(map(str, dtypes))}; "
                    f"got {got}"
                )

    @property
    def num_experts(self) -> int:
        return self.w13.shape[0]

    @property
    def intermediate_size(self) -> int:
        return self.w13.shape[1] // 2

    @property
    def hidden_size(self) -> int:
        return self.w13.shape[2] * (2 if self.format == "fp4" else 1)

    @property
    def format_id(self) -> int:
        """The kernels' FORMAT constexpr."""
        return WEIGHT_FORMATS.index(self.format)

    @property
    def bytes_per_expert(self) -> int:
        """What one expert's weights and scales occupy: the bytes a token routed to it makes a step read."""
        tensors = (self.w13, self.w2, self.w13_scale, self.w2_scale)
        return sum(t[0].numel() * t.element_size() for t in tensors if t is not None)

    @property
    def w13_args(self) -> tuple:
        """Kernel arguments for w13: codes, scales, then the strides of expert and row of each, and the
        scales' column stride."""
        return _kernel_args(self.w13, self.w13_scale)

    @property
    def w2_args(self) -> tuple:
        return _kernel_args(self.w2, self.w2_scale)

    def check_block_k(self, block_k: int, per_tile_scale: bool) -> None:
        """A K tile must hold whole FP4 scale groups, and on the blocked path (`per_tile_scale`) an FP8
        tile must lie inside one scale block."""
        if self.format == "fp4" and block_k < FP4_SCALE_GROUP.value:
            raise ValueError(f"fp4 experts need block_k >= {FP4_SCALE_GROUP.value} (whole scale groups); got {block_k}")
        if self.format == "fp8_block" and per_tile_scale and block_k > FP8_SCALE_BLOCK.value:
            raise ValueError(
                f"fp8_block experts need block_k <= {FP8_SCALE_BLOCK.value} on the blocked path (one scale block "
                f"per K tile); got {block_k}"
            )

    def product_groups(self, block_k: int) -> tuple[int, int]:
        """(groups, group width) of a GEMV tile of block_k columns: one scale per row and group."""
        width = {
            "dense": block_k,
            "fp8_block": min(block_k, FP8_SCALE_BLOCK.value),
            "fp4": FP4_SCALE_GROUP.value,
        }[self.format]
        return block_k // width, width


def _kernel_args(weight: torch.Tensor, scale: torch.Tensor | None) -> tuple:
    if scale is None:  # dense: the kernels never read the scale pointer
        return weight, weight, weight.stride(0), weight.stride(1), 0, 0, 0
    scale = scale.view(torch.uint8) if scale.dtype == torch.float8_e8m0fnu else scale
    return weight.view(torch.uint8), scale, weight.stride(0), weight.stride(1), *scale.stride()


@triton.jit
def _fp4_tile(
    w_ptr,
    s_ptr,
    rows,
    row_valid,
    start,
    k_size,
    stride_wn,
    stride_sn,
    stride_sk,
    BLOCK_N: tl.constexpr,
    GROUPS: tl.constexpr,
):
    """FP4 weights of `rows` x columns [start, start + 32 * GROUPS), decoded and scaled, as fp32
    [BLOCK_N, GROUPS, 32]. k_size is a multiple of 32, so whole groups are masked."""
    first = start + tl.arange(0, GROUPS) * FP4_SCALE_GROUP  # each group's first column
    valid = row_valid[:, None] & (first < k_size)[None, :]
    byte = first[:, None] // 2 + tl.arange(0, FP4_SCALE_GROUP // 2)[None, :]
    codes = tl.load(w_ptr + rows[:, None, None] * stride_wn + byte[None, :, :], mask=valid[:, :, None], other=0)
    exponents = tl.load(
        s_ptr + rows[:, None] * stride_sn + (first // FP4_SCALE_GROUP)[None, :] * stride_sk, mask=valid, other=0
    )
    scale = (ue8m0_to_f32(exponents) * _E2M1_FACTOR)[:, :, None]
    even = e2m1_to_f16(codes).to(tl.float32) * scale  # the decoder reads the low nibble only
    odd = e2m1_to_f16(codes >> 4).to(tl.float32) * scale
    return tl.reshape(tl.join(even, odd), [BLOCK_N, GROUPS, FP4_SCALE_GROUP])


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    if IEEE:  # float32 operands: exact products, so fp32 runs match the reference closely
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def dot_tile(
    w_ptr,
    s_ptr,
    rows,
    row_valid,
    start,
    k_size,
    stride_wn,
    stride_sn,
    stride_sk,
    dtype: tl.constexpr,
    FORMAT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """W[rows, start : start + BLOCK_K]^T as a [BLOCK_K, BLOCK_N] tl.dot operand in `dtype`, W being one
    expert's weight (w_ptr, s_ptr already at that expert); FP8 still owes its block scales
    (`scaled_dot` applies them)."""
    if FORMAT == FP4:
        groups = _fp4_tile(
            w_ptr,
            s_ptr,
            rows,
            row_valid,
            start,
            k_size,
            stride_wn,
            stride_sn,
            stride_sk,
            BLOCK_N,
            BLOCK_K // FP4_SCALE_GROUP,
        )
        w = tl.trans(tl.reshape(groups, [BLOCK_N, BLOCK_K]).to(dtype))
    else:
        ks = start + tl.arange(0, BLOCK_K)
        w = tl.load(
            w_ptr + rows[None, :] * stride_wn + ks[:, None], mask=(ks < k_size)[:, None] & row_valid[None, :], other=0
        )
        if FORMAT == FP8_BLOCK:
            w = e4m3_to_f16(w).to(dtype)
    return w


@triton.jit
def scaled_dot(
    acc,
    x,
    w,
    s_ptr,
    rows,
    row_valid,
    start,
    stride_sn,
    stride_sk,
    FORMAT: tl.constexpr,
    IEEE: tl.constexpr,
):
    """acc [M, BLOCK_N] + x [M, BLOCK_K] @ w (a `dot_tile`), in fp32. An FP8 tile's columns lie in one
    scale block, so its partial product is scaled once per row of W."""
    if FORMAT == FP8_BLOCK:
        scale = tl.load(
            s_ptr + (rows // FP8_SCALE_BLOCK) * stride_sn + (start // FP8_SCALE_BLOCK) * stride_sk,
            mask=row_valid,
            other=0.0,
        )
        acc += _dot(x, w, tl.zeros_like(acc), IEEE) * (scale * _E4M3_FACTOR)[None, :]
    else:
        acc = _dot(x, w, acc, IEEE)
    return acc


@triton.jit
def expert_products(
    x,
    w_ptr,
    s_ptr,
    rows,
    row_valid,
    start,
    k_size,
    stride_wn,
    stride_sn,
    stride_sk,
    FORMAT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUPS: tl.constexpr,
    GROUP_W: tl.constexpr,
):
    """fp32 [BLOCK_N, GROUPS, GROUP_W] products W[rows, k] * x[k] over the columns
    k = start + group * GROUP_W + i, x: those columns' fp32 inputs [GROUPS, GROUP_W]."""
    if FORMAT == FP4:
        w = _fp4_tile(w_ptr, s_ptr, rows, row_valid, start, k_size, stride_wn, stride_sn, stride_sk, BLOCK_N, GROUPS)
    else:
        first = start + tl.arange(0, GROUPS) * GROUP_W
        ks = first[:, None] + tl.arange(0, GROUP_W)[None, :]
        w = tl.load(
            w_ptr + rows[:, None, None] * stride_wn + ks[None, :, :],
            mask=row_valid[:, None, None] & (ks < k_size)[None, :, :],
            other=0,
        )
        if FORMAT == FP8_BLOCK:
            scale = tl.load(
                s_ptr
                + (rows // FP8_SCALE_BLOCK)[:, None] * stride_sn
                + (first // FP8_SCALE_BLOCK)[None, :] * stride_sk,
                mask=row_valid[:, None] & (first < k_size)[None, :],
                other=0.0,
            )
            w = e4m3_to_f16(w).to(tl.float32) * (scale * _E4M3_FACTOR)[:, :, None]
        else:
            w = w.to(tl.float32)
    return w * x[None, :, :]
