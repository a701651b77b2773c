"""Routed experts of one MoE layer: the fused Triton kernel against RoutedExperts' reference loop.

Per shape, weight format and token count T, on seeded random routings (distinct experts per token),
times:
  loop          - the reference loop (eager; it reads the active experts back to the host); for the
                  low-bit formats it runs on their bf16 dequantisation, as seekd's dequantize-on-load does
  kernel        - fused_moe launched eagerly
  kernel_graph  - fused_moe replayed as a CUDA graph, as captured decode steps run it (at T=1: the
                  one-token decode time)
  pairs_* / blocks_*  - its two paths forced (graph replay): the per-pair GEMVs and the blocks
                  sorted by expert; where they cross sets PAIR_PATH_MAX_TOKENS
  router_*      - the gate's routing for the shape's real router config: TopKRouter's torch ops
                  against the logits GEMV + one-launch top-k kernel (graph replay)
  align_*       - the alignment by expert alone, its one-program Triton kernel and its torch ops
                  (graph replay): where they cross sets ALIGN_KERNEL_MAX_PAIRS
and the roofline: the bytes of the experts that the routing touches (weight_bytes: codes and scales
for the low-bit formats) over the device-to-device copy bandwidth measured in the same run, beside the
rate the graph-replayed kernel reads them at (read_gbs, read_vs_copy). Formats: dense (bf16 weights),
fp8_block (DeepSeek V3's 128x128 block FP8) and fp4 (V4's packed e2m1, a ue8m0 scale per 32), random
codes and scales of realistic size. Router and alignment timings do not depend on the format: only
the first format's rows carry them. `--sweep` also times a set of tilings per case (graph replay), to
tune `pick_tiling`. bf16 activations, CUDA events; `--tiny --device cpu` runs the script through
Triton's interpreter on small shapes in float32 (a smoke test, not a measurement). Prints a table,
writes JSON.

    python benchmarks/fused_moe.py [--shapes v2-lite v3-tp8 v4-flash] [--formats dense fp8_block fp4]
        [--tokens 1 16 64 256] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

if "--tiny" in sys.argv and not os.environ.get("TRITON_INTERPRET"):
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels run on the CPU

import torch
import triton

from seekd.bench.report import result_header
from seekd.kernels.fused_moe import (
    PAIR_CANDIDATES,
    PAIR_TILING,
    WEIGHT_FORMATS,
    ExpertWeights,
    MoeTiling,
    PairTiling,
    fused_moe,
    pick_tiling,
)
from seekd.kernels.moe_align import align_by_expert_kernel, align_by_expert_torch
from seekd.layers.moe import RoutedExperts, TopKRouter
from seekd.layers.quantization import dequantize_block_fp8, dequantize_fp4

# (experts, top_k, hidden, moe intermediate per GPU)
SHAPES = {
    "v2-lite": (64, 6, 2048, 1408),  # DeepSeek-V2-Lite, one GPU
    "v3-tp8": (256, 8, 7168, 256),  # DeepSeek-V3/R1, intermediate 2048 split over 8 GPUs
    "v3-tp4": (256, 8, 7168, 512),
    "v4-flash": (256, 6, 4096, 2048),  # DeepSeek-V4-Flash, one GPU
    "tiny": (8, 2, 64, 32),
}
# each shape's router: scoring, top-k method, groups, groups kept, normalised, scaling factor
ROUTERS = {
    "v2-lite": ("softmax", "greedy", 1, 1, False, 1.0),
    "v3-tp8": ("sigmoid", "noaux_tc", 8, 4, True, 2.5),
    "v3-tp4": ("sigmoid", "noaux_tc", 8, 4, True, 2.5),
    "v4-flash": ("sqrtsoftplus", "noaux_tc", 1, 1, True, 1.5),
    "tiny": ("softmax", "greedy", 1, 1, False, 1.0),
}
SWIGLU_LIMITS = {"v4-flash": 10.0}


def make_router(shape: str, gen: torch.Generator, use_kernel: bool = False) -> TopKRouter:
    num_experts, top_k, hidden, _ = SHAPES[shape]
    scoring, method, n_group, topk_group, norm, scale = ROUTERS[shape]
    router = TopKRouter(
        hidden,
        num_experts,
        top_k,
        scoring_func=scoring,
        topk_method=method,
        n_group=n_group,
        topk_group=topk_group,
        norm_topk_prob=norm,
        routed_scaling_factor=scale,
        use_kernel=use_kernel,
    )
    router.weight.normal_(0.0, hidden**-0.5, generator=gen)
    if method == "noaux_tc":
        router.e_score_correction_bias.normal_(0.0, 0.1, generator=gen)
    return router


SWEEP = [
    MoeTiling(m, up, down, k, w, s)
    for m in (16, 32, 64)
    for up, down, k, w, s in (
        (16, 32, 128, 4, 3),
        (32, 64, 64, 4, 3),
        (32, 64, 128, 4, 3),
        (64, 64, 64, 4, 3),
        (64, 64, 128, 4, 4),
        (64, 128, 64, 8, 3),
        (128, 128, 64, 8, 3),
        (32, 32, 256, 4, 3),
    )
]


def copy_bandwidth_gbs(device: torch.device) -> float | None:
    """Device-to-device copy of 1 GiB, read + written bytes per second."""
    if device.type != "cuda":
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, reps=10, graph=False)
    return round(2 * src.numel() / ms / 1e6, 1)


def time_ms(fn: Callable[[], object], device: torch.device, reps: int, graph: bool) -> float:
    fn()  # compiles (and, for the loop, warms the allocator)
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return 1e3 * (time.perf_counter() - start) / reps
    torch.cuda.synchronize()
    run = fn
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        run = g.replay
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def random_lowbit(
    fmt: str, num_experts: int, rows: int, cols: int, std: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and scales of a stacked [E, rows, cols] weight whose values have about `std`: FP8 codes
    of N(0, 64) with block scales near std / 64, or uniform FP4 codes (rms about 3) with exponents
    near std / 3. Made on the current device."""
    if fmt == "fp8_block":
        codes = torch.empty(num_experts, rows, cols, dtype=torch.float8_e4m3fn)
        for e in range(num_experts):  # a float32 copy of every expert at once would not fit
            codes[e] = (torch.randn(rows, cols, generator=gen) * 64).clamp(-448, 448)
        blocks = (num_experts, triton.cdiv(rows, 128), triton.cdiv(cols, 128))
        return codes, (0.75 + 0.5 * torch.rand(blocks, generator=gen)) * (std / 64)
    codes = torch.randint(0, 256, (num_experts, rows, cols // 2), generator=gen, dtype=torch.uint8)
    exponent = 127 + round(math.log2(std / 3))
    groups = (num_experts, rows, cols // 32)
    return codes, torch.randint(exponent - 1, exponent + 2, groups, generator=gen, dtype=torch.uint8)


def make_experts(fmt: str, loop: RoutedExperts, gen: torch.Generator) -> ExpertWeights:
    """The benchmarked experts in `fmt`; the reference loop's weights (the activations' dtype) get the
    same values (for low-bit formats their dequantisation, as seekd's loader makes it)."""
    w13, w2 = loop.w13_weight.data, loop.w2_weight.data
    num_experts, hidden, inter = w13.shape[0], w13.shape[2], w2.shape[2]
    if fmt == "dense":
        w13.normal_(0.0, hidden**-0.5, generator=gen)
        w2.normal_(0.0, inter**-0.5, generator=gen)
        return ExpertWeights(w13, w2)
    codes13, scales13 = random_lowbit(fmt, num_experts, 2 * inter, hidden, hidden**-0.5, gen)
    codes2, scales2 = random_lowbit(fmt, num_experts, hidden, inter, inter**-0.5, gen)
    for e in range(num_experts):
        for dst, codes, scales in ((w13, codes13, scales13), (w2, codes2, scales2)):
            if fmt == "fp8_block":
                dst[e] = dequantize_block_fp8(codes[e], scales[e], (128, 128), dst.dtype)
            else:
                dst[e] = dequantize_fp4(codes[e], scales[e].view(torch.float8_e8m0fnu), dst.dtype)
    return ExpertWeights(codes13, codes2, scales13, scales2, fmt)


def fits(experts: ExpertWeights, tiling: MoeTiling | PairTiling) -> bool:
    try:
        experts.check_block_k(tiling.block_k, per_tile_scale=isinstance(tiling, MoeTiling))
    except ValueError:
        return False
    return True


def bench_case(
    shape: str,
    fmt: str,
    num_tokens: int,
    device: torch.device,
    dtype: torch.dtype,
    reps: int,
    bandwidth: float | None,
    sweep: bool,
    format_independent: bool,
) -> dict:
    """One row; `format_independent` adds the router and alignment timings."""
    num_experts, top_k, hidden, inter = SHAPES[shape]
    limit = SWIGLU_LIMITS.get(shape)
    gen = torch.Generator(device).manual_seed(num_tokens)
    with torch.device(device):  # V3's experts are gigabytes: fill them where they live
        loop = RoutedExperts(num_experts, hidden, inter, limit).to(dtype)
        experts = make_experts(fmt, loop, gen)
        x = torch.randn(num_tokens, hidden, generator=gen, dtype=dtype)
        weights, ids = torch.rand(num_tokens, num_experts, generator=gen).softmax(-1).topk(top_k, dim=-1)

    def kernel(tiling: MoeTiling | PairTiling | None = None) -> torch.Tensor:
        return fused_moe(x, experts, weights, ids, limit, tiling)

    ref = loop(x, weights, ids)
    out = kernel()
    active = ids.unique().numel()
    weight_bytes = active * experts.bytes_per_expert
    blocked = pick_tiling(num_tokens * top_k, num_experts, hidden, inter, device)
    row = {
        "shape": shape,
        "format": fmt,
        "tokens": num_tokens,
        "experts": num_experts,
        "top_k": top_k,
        "hidden": hidden,
        "intermediate": inter,
        "swiglu_limit": limit,
        "active_experts": active,
        "weight_bytes": weight_bytes,
        "expert_weight_mb": round(weight_bytes / 1e6, 2),
        "tiling": blocked.name,
        "max_abs_diff_vs_loop": float((out.float() - ref.float()).abs().max()),
        "loop_ms": time_ms(lambda: loop(x, weights, ids), device, reps, graph=False),
        "kernel_ms": time_ms(kernel, device, reps, graph=False),
    }
    if device.type == "cuda":
        row["kernel_graph_ms"] = time_ms(kernel, device, reps, graph=True)
        for name, forced in (("pairs", PAIR_TILING), ("blocks", blocked)):
            row[f"{name}_graph_ms"] = time_ms(lambda t=forced: kernel(t), device, reps, graph=True)
        if format_independent:
            row.update(time_routing(shape, x, ids, blocked.block_m, gen, device, reps))
        row["roofline_ms"] = weight_bytes / (bandwidth * 1e6)
        row["graph_vs_roofline"] = row["kernel_graph_ms"] / row["roofline_ms"]
        row["read_gbs"] = weight_bytes / (row["kernel_graph_ms"] * 1e6)
        row["read_vs_copy"] = row["read_gbs"] / bandwidth
    row["speedup_vs_loop"] = row["loop_ms"] / row.get("kernel_graph_ms", row["kernel_ms"])
    if sweep:
        candidates = [t for t in SWEEP if t.block_m <= max(16, triton.next_power_of_2(num_tokens * top_k))]
        candidates += list(PAIR_CANDIDATES) if num_tokens <= 4 else []
        row["sweep_graph_ms"] = {
            t.name: round(time_ms(lambda t=t: kernel(t), device, reps, graph=device.type == "cuda"), 4)
            for t in candidates
            if fits(experts, t)
        }
        row["sweep_best"] = min(row["sweep_graph_ms"], key=row["sweep_graph_ms"].get)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def time_routing(
    shape: str,
    x: torch.Tensor,
    ids: torch.Tensor,
    block_m: int,
    gen: torch.Generator,
    device: torch.device,
    reps: int,
) -> dict:
    """The alignment by expert (kernel and torch ops) and the shape's router (torch ops and kernels)."""
    num_experts = SHAPES[shape][0]
    row = {}
    for method, align in (("kernel", align_by_expert_kernel), ("torch", align_by_expert_torch)):
        run = partial(align, ids, num_experts, block_m)
        row[f"align_{method}_graph_ms"] = time_ms(run, device, reps, graph=True)
    same_weights = torch.Generator(gen.device).set_state(gen.get_state())
    with torch.device(device):
        router = make_router(shape, gen)
        fused = make_router(shape, same_weights, use_kernel=True)
    ref_route = router(x)
    route = fused(x)
    row["router_same_experts"] = bool(torch.equal(route[1], ref_route[1]))
    row["router_max_weight_diff"] = float((route[0] - ref_route[0]).abs().max())
    for name, module in (("torch", router), ("kernel", fused)):
        row[f"router_{name}_graph_ms"] = time_ms(lambda m=module: m(x), device, reps, graph=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=["v2-lite", "v3-tp8", "v4-flash"], choices=sorted(SHAPES))
    parser.add_argument("--formats", nargs="+", default=list(WEIGHT_FORMATS), choices=WEIGHT_FORMATS)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--sweep", action="store_true", help="also time every tiling in SWEEP")
    parser.add_argument("--tiny", action="store_true", help="tiny shape in float32 (CPU smoke test)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda" and not args.tiny:
        parser.error("the kernel needs a CUDA GPU; on the CPU only --tiny runs (through Triton's interpreter)")
    shapes = ["tiny"] if args.tiny else args.shapes
    dtype = torch.float32 if args.tiny else torch.bfloat16
    bandwidth = copy_bandwidth_gbs(device)
    rows = [
        bench_case(s, f, t, device, dtype, args.reps, bandwidth, args.sweep, format_independent=f == args.formats[0])
        for s in shapes
        for f in args.formats
        for t in args.tokens
    ]

    print(
        f"{'shape':<9}{'format':<10}{'T':>5}{'active':>7}{'loop ms':>10}{'kernel ms':>11}{'graph ms':>10}"
        f"{'roofline':>10}{'GB/s':>8}{'speedup':>9}{'max diff':>10}"
    )
    nan = float("nan")
    for r in rows:
        print(
            f"{r['shape']:<9}{r['format']:<10}{r['tokens']:>5}{r['active_experts']:>7}{r['loop_ms']:>10.3f}"
            f"{r['kernel_ms']:>11.3f}{r.get('kernel_graph_ms', nan):>10.3f}{r.get('roofline_ms', nan):>10.3f}"
            f"{r.get('read_gbs', nan):>8.0f}{r['speedup_vs_loop']:>9.1f}{r['max_abs_diff_vs_loop']:>10.2e}"
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    tag = "cuda" if device.type == "cuda" else "cpu"
    out = args.out or Path("benchmarks/results") / f"fused_moe_{tag}.json"
    result = {
        **result_header("fused_moe", name, command=" ".join(["python", *sys.argv])),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dtype": str(dtype).removeprefix("torch."),  # the activations'; formats name the experts'
        "formats": args.formats,
        "interpreted": os.environ.get("TRITON_INTERPRET") == "1",
        "copy_bandwidth_gbs": bandwidth,
        "shapes": {s: dict(zip(("experts", "top_k", "hidden", "intermediate"), SHAPES[s])) for s in shapes},
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
