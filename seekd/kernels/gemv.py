"""Matrix-vector products for batch-1 decode, chosen per weight shape by measurement.

At batch 1 every projection reads its whole weight to produce one row, so decode speed is weight
bytes over achieved bandwidth. cuBLAS reaches over 90% of the copy bandwidth on the wide MLP
projections but noticeably less on the narrower attention ones (benchmarks/profile_decode.py).
This kernel gives each program a few output rows and streams their weights in wide tiles; it can
also compute silu(gate) * up from a gate-up projection's output as it goes, which removes the
activation kernel in front of the down projection. Which of cuBLAS and the tile configurations is
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
# pick_gemv keeps the fastest.
CANDIDATES = (
    GemvConfig(4, 1024, 4),
    GemvConfig(8, 512, 4),
    GemvConfig(8, 512, 4, 4),
    GemvConfig(16, 256, 4),
    GemvConfig(16, 512, 8),
    GemvConfig(16, 512, 8, 4),
    GemvConfig(32, 256, 8),
)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, n, k, stride_w,
    HAS_BIAS: tl.constexpr, GATED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < n
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for start in range(0, k, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        col_mask = cols < k
        if GATED:  # x holds [gate | up]; round like the reference: silu, then the product
            gate = tl.load(x_ptr + cols, mask=col_mask, other=0.0)
            up = tl.load(x_ptr + k + cols, mask=col_mask, other=0.0)
            g = gate.to(tl.float32)
            silu = (g / (1.0 + tl.exp(-g))).to(up.dtype).to(tl.float32)
            x = (silu * up.to(tl.float32)).to(up.dtype).to(tl.float32)
        else:
            x = tl.load(x_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * stride_w + cols[None, :],
                    mask=row_mask[:, None] & col_mask[None, :], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(b_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_mask)


def gemv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: GemvConfig, gated: bool = False
) -> torch.Tensor:
    """x: [1, K] (or [1, 2K] as [gate | up] when gated); weight: [N, K] -> [1, N] = F.linear(x', weight, bias)
    with x' = silu(gate) * up when gated."""
    n, k = weight.shape
    assert x.shape[0] == 1 and x.shape[-1] == (2 * k if gated else k) and weight.stride(1) == 1
    x = x.contiguous()
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    _gemv_kernel[(triton.cdiv(n, config.block_n),)](
        x, weight, bias if bias is not None else weight, out, n, k, weight.stride(0),
        HAS_BIAS=bias is not None, GATED=gated, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out


def _time_ms(fn: Callable[[], object], reps: int) -> float:
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

    timings = {"cublas": _time_ms(run(None), reps)}
    best, best_ms = None, timings["cublas"]
    for config in CANDIDATES:
        ms = _time_ms(run(config), reps)
        timings[config.name] = ms
        if ms < best_ms * 0.98:  # a clear win only: cuBLAS stays the default on a tie
            best, best_ms = config, ms
    return best, timings
