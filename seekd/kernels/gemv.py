"""Matrix-vector products for batch-1 decode, chosen per weight shape by measurement.

At batch 1 every projection reads its whole weight to produce one row, so decode speed is weight
bytes over achieved bandwidth. cuBLAS reaches over 90% of the copy bandwidth on the wide MLP
projections but noticeably less on the narrower attention ones (benchmarks/profile_decode.py).
This kernel gives each program a few output rows and streams their weights in wide tiles; it can
also compute silu(gate) * up from a gate-up projection's output as it goes, which removes the
activation kernel in front of the down projection, and fold the add-RMSNorm in front of a
projection into it (`normed_gemv`), which removes the norm kernel. Which of cuBLAS and the tile configurations is
fastest depends on shape and GPU, so `pick_gemv` times them on the model's own weights at start-up
and F.linear stays the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


@dataclass(frozen=True)
class GemvConfig:
    block_n: int  # output rows per program
    block_k: int  # input features per tile
    num_warps: int
    num_stages: int = 3  # tiles in flight per program: the loads must cover HBM latency

    @property
    def name(self) -> str:
        return f"triton_{self.block_n}x{self.block_k}_w{self.num_warps}_s{self.num_stages}"


# Tilings that cover narrow and wide projections, with deeper pipelines where programs are few;
# pick_gemv keeps the fastest. On an H100 4x1024 won every shape at 7B sizes and taller tiles lost
# clearly (benchmarks/results/offline_r1-distill-qwen-7b_h100_1e552cb_no_hf.json), so the list
# searches around it: fewer rows per program for the narrow attention projections (less tail),
# wider tiles and deeper pipelines.
CANDIDATES = (
    GemvConfig(2, 1024, 4),
    GemvConfig(4, 1024, 4),
    GemvConfig(4, 1024, 4, 4),
    GemvConfig(4, 2048, 8),
    GemvConfig(8, 512, 4),
    GemvConfig(16, 512, 8),
)


@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    n,
    k,
    stride_w,
    res_ptr,
    norm_ptr,
    res_out_ptr,
    eps,
    HAS_BIAS: tl.constexpr,
    GATED: tl.constexpr,
    NORMED: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    sum_sq = tl.zeros([BLOCK_K], tl.float32)
    for start in range(0, k, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        col_mask = cols < k
        if GATED:  # x holds [gate | up]; round like the reference: silu, then the product
            gate = tl.load(x_ptr + cols, mask=col_mask, other=0.0)
            up = tl.load(x_ptr + k + cols, mask=col_mask, other=0.0)
            g = gate.to(tl.float32)
            silu = (g / (1.0 + tl.exp(-g))).to(up.dtype).to(tl.float32)
            x = (silu * up.to(tl.float32)).to(up.dtype).to(tl.float32)
        elif NORMED:
            # RMSNorm(x + residual) in one pass: the norm's scale is one number per row, so the
            # products take h * weight now and the scale once the sum of squares is complete
            h = tl.load(x_ptr + cols, mask=col_mask, other=0.0)
            if HAS_RESIDUAL:  # the sum in fp32, rounded once, as the fused add-RMSNorm kernel does
                h = (h.to(tl.float32) + tl.load(res_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)).to(h.dtype)
                if pid == 0:
                    tl.store(res_out_ptr + cols, h, mask=col_mask)
            hf = h.to(tl.float32)
            sum_sq += hf * hf
            x = hf * tl.load(norm_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        else:
            x = tl.load(x_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        w = tl.load(
            w_ptr + rows[:, None] * stride_w + cols[None, :], mask=row_mask[:, None] & col_mask[None, :], other=0.0
        )
        acc += w.to(tl.float32) * x[None, :]
    out = tl.sum(acc, axis=1)
    if NORMED:
        out *= tl.rsqrt(tl.sum(sum_sq, axis=0) / k + eps)
    if HAS_BIAS:
        out += tl.load(b_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_mask)


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    config: GemvConfig,
    gated: bool = False,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """x: [1, K] (or [1, 2K] as [gate | up] when gated); weight: [N, K] -> [1, N] = F.linear(x', weight, bias)
    with x' = silu(gate) * up when gated. Products accumulate in fp32 whatever the dtypes, so x in the
    model dtype against an fp32 weight with out_dtype fp32 is F.linear(x.float(), weight)."""
    n, k = weight.shape
    assert x.shape[0] == 1 and x.shape[-1] == (2 * k if gated else k) and weight.stride(1) == 1
    x = x.contiguous()
    out = torch.empty((1, n), dtype=out_dtype or x.dtype, device=x.device)
    _launch(x, weight, bias, out, config, gated=gated)
    return out


def normed_gemv(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    config: GemvConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F.linear(RMSNorm(h), weight, bias), h) for one row, h = x + residual (x alone without one):
    the add-RMSNorm in front of a projection, without its own kernel."""
    n, k = weight.shape
    assert x.shape == (1, k) and weight.stride(1) == 1 and (residual is None or residual.shape == x.shape)
    x = x.contiguous()
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    if residual is None:
        _launch(x, weight, bias, out, config, norm=(x, norm_weight, x, eps), has_residual=False)
        return out, x
    residual_out = torch.empty_like(x)  # not in place: every program reads the old residual
    _launch(x, weight, bias, out, config, norm=(residual.contiguous(), norm_weight, residual_out, eps))
    return out, residual_out


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: GemvConfig,
    gated: bool = False,
    norm: tuple[torch.Tensor, torch.Tensor, torch.Tensor, float] | None = None,
    has_residual: bool = True,
) -> None:
    n, k = weight.shape
    res, norm_weight, res_out, eps = norm if norm is not None else (x, x, x, 0.0)
    _gemv_kernel[(triton.cdiv(n, config.block_n),)](
        x,
        weight,
        bias if bias is not None else weight,
        out,
        n,
        k,
        weight.stride(0),
        res,
        norm_weight,
        res_out,
        eps,
        HAS_BIAS=bias is not None,
        GATED=gated,
        NORMED=norm is not None,
        HAS_RESIDUAL=has_residual,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )


def graph_time_ms(fn: Callable[[], object], reps: int) -> float:
    """GPU time of `fn` replayed as a CUDA graph, as decode steps run: eager timing would charge
    Triton's Python launch cost, which graphs remove, against it."""
    fn()  # compiles the kernel before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def pick_gemv(
    weights: Sequence[torch.Tensor],
    biases: Sequence[torch.Tensor | None],
    gated: bool,
    baseline: Callable[[torch.Tensor], torch.Tensor],
    reps: int = 5,
) -> tuple[GemvConfig | None, dict[str, float]]:
    """The fastest way to run batch-1 products with every weight of one shape (all layers' weights in
    turn, so that timings read from memory as decode does, not from a warm L2 cache): None means
    `baseline` (F.linear, after the activation when gated) is at least as fast. Returns the choice and
    the ms per pass over all the weights for each option tried."""
    k = weights[0].shape[1]
    x = torch.randn(1, 2 * k if gated else k, dtype=weights[0].dtype, device=weights[0].device)

    def run(config: GemvConfig | None) -> Callable[[], None]:
        def one_pass() -> None:
            for w, b in zip(weights, biases):
                if config is None:
                    F.linear(baseline(x), w, b)
                else:
                    gemv(x, w, b, config, gated)

        return one_pass

    return fastest(run, "cublas", reps)


def pick_normed_gemv(
    weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None], plain: GemvConfig | None, reps: int = 5
) -> tuple[GemvConfig | None, dict[str, float]]:
    """Like pick_gemv for projections behind an add-RMSNorm: the GEMV with the norm folded in
    against the norm kernel followed by the product `plain` (None: cuBLAS) that pick_gemv chose."""
    from seekd.kernels.rmsnorm import rms_norm

    k = weights[0].shape[1]
    x, residual = (torch.randn(1, k, dtype=weights[0].dtype, device=weights[0].device) for _ in range(2))
    norm_weight = torch.ones(k, dtype=weights[0].dtype, device=weights[0].device)

    def run(config: GemvConfig | None) -> Callable[[], None]:
        def one_pass() -> None:
            for w, b in zip(weights, biases):
                if config is not None:
                    normed_gemv(x, residual, norm_weight, 1e-6, w, b, config)
                    continue
                normed, _ = rms_norm(x, norm_weight, 1e-6, residual)
                if plain is None:
                    F.linear(normed, w, b)
                else:
                    gemv(normed, w, b, plain)

        return one_pass

    return fastest(run, f"rmsnorm+{'cublas' if plain is None else plain.name}", reps)


def fastest(
    run: Callable[[GemvConfig | None], Callable[[], None]],
    baseline_name: str,
    reps: int,
    candidates: Sequence = CANDIDATES,
) -> tuple[GemvConfig | None, dict[str, float]]:
    """The candidate (anything with a `name`) whose pass `run(candidate)` replays fastest, or None when
    none clearly beats the baseline pass `run(None)`; with every timing, the baseline's first."""
    timings = {baseline_name: graph_time_ms(run(None), reps)}
    best, best_ms = None, timings[baseline_name]
    for config in candidates:
        ms = graph_time_ms(run(config), reps)
        timings[config.name] = ms
        if ms < best_ms * 0.98:  # a clear win only: the baseline stays on a tie
            best, best_ms = config, ms
    return best, timings
