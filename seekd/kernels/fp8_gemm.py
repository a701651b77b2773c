"""Products with DeepSeek's block-FP8 weights kept in FP8: e4m3 codes [N, K] and one float32 scale per
128x128 block (`weight_scale_inv`: real value = code value * scale), so a weight costs one byte.

Two GEMM modes share one kernel:
- w8a16 (any GPU from sm_80): codes are decoded in registers by bit moves (`e4m3_to_f16`) into the
  activations' dtype and multiplied on the bf16/fp16 tensor cores;
- w8a8 (sm_89+): activations are quantized per token and per 128 channels (`quantize_fp8_groups`) and
  the FP8 tensor cores multiply codes by codes.
Either way every K-tile lies inside one 128-wide scale block, so each tile's product is scaled and
added to an fp32 accumulator: the fp8 (or bf16) products never accumulate across scale blocks.

At batch 1 a GEMM tile wastes most of its rows, so `block_fp8_gemv` streams the codes once with
CUDA cores instead, and `pick_fp8_gemv` chooses between it and the GEMM by timing at start-up.
`dequantize_block_fp8` (seekd.models.weights) followed by F.linear is the reference for all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl

from seekd.kernels.gemv import graph_time_ms
from seekd.kernels.lowbit import E4M3_DECODE_FACTOR, e4m3_to_f16

FP8_BLOCK = 128  # DeepSeek's weight blocks are 128 x 128; activation groups are 128 channels
FP8_MAX = 448.0  # largest finite float8_e4m3fn
AMAX_FLOOR = 1e-10  # an all-zero block or group still gets a finite, non-zero scale
MODES = ("w8a16", "w8a8")

_FP8_MAX = tl.constexpr(FP8_MAX)
_AMAX_FLOOR = tl.constexpr(AMAX_FLOOR)
_SCALE_BLOCK = tl.constexpr(FP8_BLOCK)
_DECODE_FACTOR = tl.constexpr(E4M3_DECODE_FACTOR)


def default_fp8_mode(device: torch.device | str) -> str:
    """w8a8 where the GPU has FP8 tensor cores (sm_89+: L40, 4090, H100, H200), else w8a16."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):
        return "w8a8"
    return "w8a16"


@dataclass(frozen=True)
class Fp8GemmConfig:
    block_m: int  # token rows per tile; tl.dot needs at least 16
    block_n: int  # output features per tile
    block_k: int  # reduction features per tile: divides 128, so a tile lies in one scale block
    split_k: int = 1  # programs sharing one output tile's K range (fp32 partials summed after)
    group_m: int = 8  # row tiles that visit each column tile together, while its weights are in L2
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        if self.block_k not in (32, 64, 128):
            raise ValueError(f"block_k {self.block_k} must be 32, 64 or 128 (a divisor of the 128 scale block)")
        for name in ("block_m", "block_n"):
            size = getattr(self, name)
            if size < 16 or size & (size - 1):
                raise ValueError(f"{name} {size} must be a power of two of at least 16")
        if self.split_k < 1 or self.group_m < 1:
            raise ValueError(f"split_k {self.split_k} and group_m {self.group_m} must be at least 1")

    @property
    def name(self) -> str:
        return (
            f"m{self.block_m}_n{self.block_n}_k{self.block_k}_split{self.split_k}_w{self.num_warps}_s{self.num_stages}"
        )


@lru_cache
def _streaming_multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def pick_fp8_gemm_config(m: int, n: int, k: int, device: torch.device | str) -> Fp8GemmConfig:
    """Short tiles for decode batches, whose programs each stream their own slice of the weight, and
    columns narrow enough that those programs cover every SM; where even the narrowest columns leave
    most SMs idle (narrow projections), K is split. Large batches take the big tiles that reuse each
    loaded weight tile across many tokens."""
    device = torch.device(device)
    sms = _streaming_multiprocessors(device)
    if m > 128:
        return Fp8GemmConfig(64 if m <= 512 else 128, 128, 128, num_warps=8 if m > 512 else 4, num_stages=3)
    block_m = 16 if m <= 32 else 64
    row_tiles = triton.cdiv(m, block_m)
    block_n = next((bn for bn in (128, 64) if row_tiles * triton.cdiv(n, bn) >= sms), 32)
    programs = row_tiles * triton.cdiv(n, block_n)
    k_tiles = triton.cdiv(k, 128)
    split_k = max(1, min(sms // programs, k_tiles // 8, 8)) if 2 * programs <= sms else 1
    return Fp8GemmConfig(block_m, block_n, 128, split_k=split_k, num_warps=4, num_stages=4)


@triton.jit
def _block_fp8_gemm_kernel(
    a_ptr,
    a_scale_ptr,
    w_ptr,
    w_scale_ptr,
    bias_ptr,
    out_ptr,
    m,
    n,
    k,
    tiles_per_split,
    stride_am,
    stride_asm,
    stride_wn,
    stride_wsn,
    stride_om,
    stride_os,
    W8A8: tl.constexpr,
    IEEE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    row_tiles = tl.cdiv(m, BLOCK_M)
    col_tiles = tl.cdiv(n, BLOCK_N)
    programs_per_group = GROUP_M * col_tiles
    first_m = (pid // programs_per_group) * GROUP_M
    group_rows = tl.minimum(row_tiles - first_m, GROUP_M)
    pid_m = first_m + (pid % programs_per_group) % group_rows
    pid_n = (pid % programs_per_group) // group_rows

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < m
    col_mask = cols < n
    a_rows = a_ptr + rows[:, None].to(tl.int64) * stride_am
    w_cols = w_ptr + cols[None, :].to(tl.int64) * stride_wn
    w_scale_cols = w_scale_ptr + (cols // _SCALE_BLOCK) * stride_wsn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    first_tile = split * tiles_per_split
    last_tile = tl.minimum(first_tile + tiles_per_split, tl.cdiv(k, BLOCK_K))
    for tile in range(first_tile, last_tile):
        ks = tile * BLOCK_K + tl.arange(0, BLOCK_K)
        k_mask = ks < k
        a = tl.load(a_rows + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0)
        w = tl.load(w_cols + ks[:, None], mask=k_mask[:, None] & col_mask[None, :], other=0)  # uint8 codes
        scale_block = (tile * BLOCK_K) // _SCALE_BLOCK
        w_scale = tl.load(w_scale_cols + scale_block, mask=col_mask, other=0.0)
        if W8A8:
            a_scale = tl.load(a_scale_ptr + rows * stride_asm + scale_block, mask=row_mask, other=0.0)
            part = tl.dot(a.to(tl.float8e4nv, bitcast=True), w.to(tl.float8e4nv, bitcast=True))
            acc += part * a_scale[:, None] * w_scale[None, :]
        else:
            w = e4m3_to_f16(w).to(a.dtype)
            if IEEE:  # float32 activations (the interpreter's tests): exact products
                part = tl.dot(a, w, input_precision="ieee")
            else:
                part = tl.dot(a, w)
            acc += part * w_scale[None, :]
    if not W8A8:
        acc *= _DECODE_FACTOR
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + split * stride_os + rows[:, None].to(tl.int64) * stride_om + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _quantize_fp8_groups_kernel(
    x_ptr, q_ptr, scale_ptr, m, k, stride_xm, stride_qm, stride_sm, BLOCK_M: tl.constexpr, GROUP: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * GROUP + tl.arange(0, GROUP)
    row_mask = rows < m
    mask = row_mask[:, None] & (cols < k)[None, :]
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    # rounded divisions (`/` compiles to approximate ones), so scales and codes equal torch's
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), _AMAX_FLOOR)
    scale = tl.math.div_rn(amax, _FP8_MAX)
    q = tl.clamp(tl.math.div_rn(x, scale[:, None]), -_FP8_MAX, _FP8_MAX).to(tl.float8e4nv)
    tl.store(q_ptr + rows[:, None].to(tl.int64) * stride_qm + cols[None, :], q, mask=mask)
    tl.store(scale_ptr + rows * stride_sm + tl.program_id(1), scale, mask=row_mask)


def quantize_fp8_groups(x: torch.Tensor, group: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (codes [M, K] float8_e4m3fn, scales [M, ceil(K/group)] float32) with x ~ codes * scale:
    each token's `group` channels scaled so that their largest magnitude maps to 448.
    Needs FP8 conversion hardware (sm_89+); Triton's interpreter rounds float32 -> e4m3 wrongly where
    rounding carries into the exponent (31.6 becomes 16, not 32), so only GPUs run it correctly."""
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"activations must be a 2-D [tokens, features] tensor with contiguous rows, got {x.shape}")
    if group < 16 or group & (group - 1):
        raise ValueError(f"group {group} must be a power of two of at least 16")
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    scales = torch.empty((m, triton.cdiv(k, group)), dtype=torch.float32, device=x.device)
    if m > 0:
        block_m = 4
        _quantize_fp8_groups_kernel[(triton.cdiv(m, block_m), scales.shape[1])](
            x, q, scales, m, k, x.stride(0), q.stride(0), scales.stride(0), BLOCK_M=block_m, GROUP=group
        )
    return q, scales


def _check_weight(weight: torch.Tensor, weight_scale: torch.Tensor) -> tuple[int, int]:
    if weight.dtype != torch.float8_e4m3fn or weight.dim() != 2 or weight.stride(1) != 1:
        raise ValueError(
            f"weight must be a 2-D float8_e4m3fn [out, in] tensor with contiguous rows, got {weight.dtype} "
            f"{tuple(weight.shape)}"
        )
    n, k = weight.shape
    expected = (triton.cdiv(n, FP8_BLOCK), triton.cdiv(k, FP8_BLOCK))
    if weight_scale.dtype != torch.float32 or tuple(weight_scale.shape) != expected or weight_scale.stride(1) != 1:
        raise ValueError(
            f"weight_scale must be float32 of shape {expected} with contiguous rows (one per {FP8_BLOCK}x{FP8_BLOCK} "
            f"block of the {n}x{k} weight), got {weight_scale.dtype} {tuple(weight_scale.shape)}"
        )
    return n, k


def block_fp8_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    mode: str = "w8a16",
    out_dtype: torch.dtype | None = None,
    config: Fp8GemmConfig | None = None,
) -> torch.Tensor:
    """F.linear(x, weight * block scales, bias) for x [..., K], weight [N, K] float8_e4m3fn and
    weight_scale [ceil(N/128), ceil(K/128)] float32 -> [..., N] in out_dtype (default x's dtype), with
    fp32 accumulation. `config` overrides pick_fp8_gemm_config (tests and tuning)."""
    n, k = _check_weight(weight, weight_scale)
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    if x.shape[-1] != k:
        raise ValueError(f"activations have {x.shape[-1]} features; the weight expects {k}")
    lead = x.shape[:-1]
    x = x.reshape(-1, k)
    if x.stride(1) != 1:
        x = x.contiguous()
    if mode == "w8a8":
        if default_fp8_mode(x.device) != "w8a8":  # the interpreter, too, rounds to e4m3 wrongly
            raise ValueError("mode 'w8a8' needs a GPU with FP8 tensor cores (sm_89+: L40, RTX 4090, H100); use 'w8a16'")
        a, a_scale = quantize_fp8_groups(x)
        out = _gemm(a, a_scale, weight, weight_scale, bias, out_dtype or x.dtype, config)
    else:
        out = _gemm(x, None, weight, weight_scale, bias, out_dtype or x.dtype, config)
    return out.reshape(*lead, n)


def w8a8_block_matmul(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    out_dtype: torch.dtype = torch.bfloat16,
    config: Fp8GemmConfig | None = None,
) -> torch.Tensor:
    """The w8a8 GEMM on activations already quantized as quantize_fp8_groups returns them (a [M, K]
    float8_e4m3fn, a_scale [M, ceil(K/128)] float32) -> [M, N]."""
    k = _check_weight(weight, weight_scale)[1]
    if a.dtype != torch.float8_e4m3fn or a.dim() != 2 or a.shape[1] != k or a.stride(1) != 1:
        raise ValueError(f"quantized activations must be float8_e4m3fn [M, {k}] with contiguous rows, got {a.shape}")
    if a_scale.dtype != torch.float32 or tuple(a_scale.shape) != (a.shape[0], triton.cdiv(k, FP8_BLOCK)):
        raise ValueError(f"activation scales must be float32 [{a.shape[0]}, {triton.cdiv(k, FP8_BLOCK)}]")
    return _gemm(a, a_scale, weight, weight_scale, bias, out_dtype, config)


def _gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor | None,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: Fp8GemmConfig | None,
) -> torch.Tensor:
    m, k = a.shape
    n = weight.shape[0]
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if m == 0:
        return torch.empty((0, n), dtype=out_dtype, device=a.device)
    config = config or pick_fp8_gemm_config(m, n, k, a.device)
    k_tiles = triton.cdiv(k, config.block_k)
    tiles_per_split = triton.cdiv(k_tiles, config.split_k)
    splits = triton.cdiv(k_tiles, tiles_per_split)  # no split left without tiles
    shape = (m, n) if splits == 1 else (splits, m, n)
    target = torch.empty(shape, dtype=out_dtype if splits == 1 else torch.float32, device=a.device)
    w8a8 = a_scale is not None
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n), splits)
    _block_fp8_gemm_kernel[grid](
        a.view(torch.uint8) if w8a8 else a,
        a_scale if w8a8 else weight_scale,
        weight.view(torch.uint8),
        weight_scale,
        bias if bias is not None else weight_scale,
        target,
        m,
        n,
        k,
        tiles_per_split,
        a.stride(0),
        a_scale.stride(0) if w8a8 else 0,
        weight.stride(0),
        weight_scale.stride(0),
        target.stride(-2),
        target.stride(0) if splits > 1 else 0,
        W8A8=w8a8,
        IEEE=a.dtype == torch.float32,
        HAS_BIAS=bias is not None and splits == 1,  # split partials get it once they are summed
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        GROUP_M=config.group_m,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if splits == 1:
        return target
    summed = target.sum(dim=0)
    return (summed if bias is None else summed + bias.float()).to(out_dtype)


@dataclass(frozen=True)
class Fp8GemvConfig:
    block_n: int  # output rows per program: divides 128, so the rows share one row of scales
    block_k: int  # input features per tile
    num_warps: int
    num_stages: int = 3

    def __post_init__(self) -> None:
        if FP8_BLOCK % self.block_n or self.block_k < 64 or self.block_k & (self.block_k - 1):
            raise ValueError(f"block_n {self.block_n} must divide {FP8_BLOCK}; block_k a power of two >= 64")

    @property
    def name(self) -> str:
        return f"fp8gemv_{self.block_n}x{self.block_k}_w{self.num_warps}_s{self.num_stages}"


# At one byte per weight a tile moves half the bytes of gemv.py's bf16 tiles of the same shape, so the
# list leans wider or taller to keep as many bytes in flight per program; taller tiles also share
# each loaded and scaled slice of x among more rows.
FP8_GEMV_CANDIDATES = (
    Fp8GemvConfig(4, 1024, 4),
    Fp8GemvConfig(8, 1024, 4),
    Fp8GemvConfig(4, 2048, 4),
    Fp8GemvConfig(8, 2048, 8),
    Fp8GemvConfig(16, 1024, 8),
    Fp8GemvConfig(16, 512, 4),
)


@triton.jit
def _f16_pairs_to_f32(pairs):
    """uint32 holding two float16 patterns -> (low half, high half) as float32."""
    low = (pairs & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    high = (pairs >> 16).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
    return low, high


@triton.jit
def _block_fp8_gemv_kernel(
    x_ptr,
    w_ptr,
    w_scale_ptr,
    bias_ptr,
    out_ptr,
    n,
    k,
    stride_w,
    stride_ws,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # The codes are read as 32-bit words of four: e4m3_to_f16's bit moves applied to a whole word
    # turn bytes 0 and 2 (then 1 and 3) into two float16 patterns at once, which takes about half
    # the instructions of moving every byte into its own register first (SASS of sm_90).
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n
    w_rows = w_ptr + rows[:, None].to(tl.int64) * stride_w
    scale_row = w_scale_ptr + ((pid * BLOCK_N) // _SCALE_BLOCK) * stride_ws
    num_words = k // 4
    acc = tl.zeros([BLOCK_N, BLOCK_K // 4], tl.float32)
    for start in range(0, num_words, BLOCK_K // 4):
        words = start + tl.arange(0, BLOCK_K // 4)
        word_mask = words < num_words
        # the block scale rides on x: one multiply per feature instead of one per weight
        scale = tl.load(scale_row + (words * 4) // _SCALE_BLOCK, mask=word_mask, other=0.0)
        x0 = tl.load(x_ptr + words * 4, mask=word_mask, other=0.0).to(tl.float32) * scale
        x1 = tl.load(x_ptr + words * 4 + 1, mask=word_mask, other=0.0).to(tl.float32) * scale
        x2 = tl.load(x_ptr + words * 4 + 2, mask=word_mask, other=0.0).to(tl.float32) * scale
        x3 = tl.load(x_ptr + words * 4 + 3, mask=word_mask, other=0.0).to(tl.float32) * scale
        w = tl.load(w_rows + words[None, :], mask=row_mask[:, None] & word_mask[None, :], other=0)
        w = w.to(tl.uint32, bitcast=True)
        w0, w2 = _f16_pairs_to_f32(((w & 0x00800080) << 8) | ((w & 0x007F007F) << 7))
        w = w >> 8
        w1, w3 = _f16_pairs_to_f32(((w & 0x00800080) << 8) | ((w & 0x007F007F) << 7))
        acc += w0 * x0[None, :]
        acc += w1 * x1[None, :]
        acc += w2 * x2[None, :]
        acc += w3 * x3[None, :]
    out = tl.sum(acc, axis=1) * _DECODE_FACTOR
    if HAS_BIAS:
        out += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_mask)


def block_fp8_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    config: Fp8GemvConfig,
    *,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One token's product with a block-FP8 weight: x [1, K] -> [1, N] in out_dtype (default x's
    dtype), reading each weight byte once and accumulating in fp32. The weight is read in 4-byte
    words, so K (and the row stride and offset) must be multiples of 4, as in every DeepSeek layer."""
    n, k = _check_weight(weight, weight_scale)
    if x.shape != (1, k):
        raise ValueError(f"the batch-1 product takes x of shape (1, {k}), got {tuple(x.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if not gemv_supports(weight):
        raise ValueError(f"block_fp8_gemv reads 4-byte words: K={k} must be a multiple of 4; use block_fp8_matmul")
    x = x.contiguous()
    out = torch.empty((1, n), dtype=out_dtype or x.dtype, device=x.device)
    _block_fp8_gemv_kernel[(triton.cdiv(n, config.block_n),)](
        x,
        weight.view(torch.int32),
        weight_scale,
        bias if bias is not None else weight_scale,
        out,
        n,
        k,
        weight.stride(0) // 4,
        weight_scale.stride(0),
        HAS_BIAS=bias is not None,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out


def gemv_supports(weight: torch.Tensor) -> bool:
    """Whether block_fp8_gemv can read this weight as 4-byte words."""
    return weight.shape[1] % 4 == 0 and weight.stride(0) % 4 == 0 and weight.storage_offset() % 4 == 0


Fp8Product = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def pick_fp8_gemv(
    weights: Sequence[torch.Tensor],
    scales: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    baseline: Fp8Product,
    *,
    dtype: torch.dtype = torch.bfloat16,
    baseline_name: str = "block_fp8_matmul",
    reps: int = 5,
) -> tuple[Fp8GemvConfig | None, dict[str, float]]:
    """The fastest batch-1 product for every block-FP8 weight of one shape, timed over all layers'
    weights in turn (so that they stream from memory as at decode, not from a warm L2): None means
    `baseline(x, weight, scale, bias)` (the GEMM at M=1) is at least as fast, or the GEMV cannot read
    these weights (K not a multiple of 4: nothing is timed). Returns the choice and the ms per pass
    over all the weights for each option tried. CUDA only (graph replay)."""
    if not all(gemv_supports(w) for w in weights):
        return None, {}
    k = weights[0].shape[1]
    x = torch.randn(1, k, dtype=dtype, device=weights[0].device)

    def run(config: Fp8GemvConfig | None) -> Callable[[], None]:
        def one_pass() -> None:
            for w, s, b in zip(weights, scales, biases):
                if config is None:
                    baseline(x, w, s, b)
                else:
                    block_fp8_gemv(x, w, s, b, config)

        return one_pass

    timings = {baseline_name: graph_time_ms(run(None), reps)}
    best, best_ms = None, timings[baseline_name]
    for config in FP8_GEMV_CANDIDATES:
        timings[config.name] = graph_time_ms(run(config), reps)
        if timings[config.name] < best_ms * 0.98:  # a clear win only: the baseline stays on a tie
            best, best_ms = config, timings[config.name]
    return best, timings
