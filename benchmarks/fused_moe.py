"""Routed experts of one MoE layer: the fused Triton kernel against RoutedExperts' reference loop.

Per shape and token count T, on seeded random routings (distinct experts per token), times:
  loop          - the reference loop (eager; it reads the active experts back to the host)
  kernel        - fused_moe launched eagerly
  kernel_graph  - fused_moe replayed as a CUDA graph, as captured decode steps run it
  pairs_* / blocks_*  - its two paths forced (graph replay): the per-pair GEMVs and the blocks
                  sorted by expert; where they cross sets PAIR_PATH_MAX_TOKENS
  router_*      - the gate's routing for the shape's real router config: TopKRouter's torch ops
                  against the logits GEMV + one-launch top-k kernel (graph replay)
  align_*       - the alignment by expert alone, its one-program Triton kernel and its torch ops
                  (graph replay): where they cross sets ALIGN_KERNEL_MAX_PAIRS
and the roofline: the bytes of the experts that the routing touches over the device-to-device copy
bandwidth measured in the same run. `--sweep` also times a set of tilings per case (graph replay),
to tune `pick_tiling`. bf16, CUDA events; `--tiny --device cpu` runs the script through Triton's
interpreter on small shapes (a smoke test, not a measurement). Prints a table, writes JSON.

    python benchmarks/fused_moe.py [--shapes v2-lite v3-tp8] [--tokens 1 16 64 256] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

if "--tiny" in sys.argv and not os.environ.get("TRITON_INTERPRET"):
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels run on the CPU

import torch
import triton

from seekd.bench.report import result_header
from seekd.kernels.fused_moe import (
    PAIR_CANDIDATES,
    PAIR_TILING,
    MoeTiling,
    align_by_expert_kernel,
    align_by_expert_torch,
    fused_moe,
    pick_tiling,
)
from seekd.layers.moe import RoutedExperts, TopKRouter

# (experts, top_k, hidden, moe intermediate per GPU)
SHAPES = {
    "v2-lite": (64, 6, 2048, 1408),  # DeepSeek-V2-Lite, one GPU
    "v3-tp8": (256, 8, 7168, 256),  # DeepSeek-V3/R1, intermediate 2048 split over 8 GPUs
    "v3-tp4": (256, 8, 7168, 512),
    "tiny": (8, 2, 64, 32),
}
# each shape's router: scoring, top-k method, groups, groups kept, normalised, scaling factor
ROUTERS = {
    "v2-lite": ("softmax", "greedy", 1, 1, False, 1.0),
    "v3-tp8": ("sigmoid", "noaux_tc", 8, 4, True, 2.5),
    "v3-tp4": ("sigmoid", "noaux_tc", 8, 4, True, 2.5),
    "tiny": ("softmax", "greedy", 1, 1, False, 1.0),
}


def make_router(shape: str, gen: torch.Generator) -> TopKRouter:
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


def bench_case(
    shape: str,
    num_tokens: int,
    device: torch.device,
    dtype: torch.dtype,
    reps: int,
    bandwidth: float | None,
    sweep: bool,
) -> dict:
    num_experts, top_k, hidden, inter = SHAPES[shape]
    gen = torch.Generator(device).manual_seed(num_tokens)
    with torch.device(device):  # V3's experts are gigabytes: fill them where they live
        experts = RoutedExperts(num_experts, hidden, inter).to(dtype)
        experts.w13_weight.normal_(0.0, hidden**-0.5, generator=gen)
        experts.w2_weight.normal_(0.0, inter**-0.5, generator=gen)
        x = torch.randn(num_tokens, hidden, generator=gen, dtype=dtype)
        weights, ids = torch.rand(num_tokens, num_experts, generator=gen).softmax(-1).topk(top_k, dim=-1)
    w13, w2 = experts.w13_weight, experts.w2_weight

    ref = experts(x, weights, ids)
    out = fused_moe(x, w13, w2, weights, ids)
    active = ids.unique().numel()
    weight_bytes = active * 3 * hidden * inter * w13.element_size()
    row = {
        "shape": shape,
        "tokens": num_tokens,
        "experts": num_experts,
        "top_k": top_k,
        "hidden": hidden,
        "intermediate": inter,
        "active_experts": active,
        "expert_weight_mb": round(weight_bytes / 1e6, 2),
        "tiling": pick_tiling(num_tokens * top_k, num_experts, hidden, inter, device).name,
        "max_abs_diff_vs_loop": float((out.float() - ref.float()).abs().max()),
        "loop_ms": time_ms(lambda: experts(x, weights, ids), device, reps, graph=False),
        "kernel_ms": time_ms(lambda: fused_moe(x, w13, w2, weights, ids), device, reps, graph=False),
    }
    if device.type == "cuda":
        row["kernel_graph_ms"] = time_ms(lambda: fused_moe(x, w13, w2, weights, ids), device, reps, graph=True)
        block_m = pick_tiling(num_tokens * top_k, num_experts, hidden, inter, device).block_m
        for method, align in (("kernel", align_by_expert_kernel), ("torch", align_by_expert_torch)):
            row[f"align_{method}_graph_ms"] = time_ms(
                lambda a=align: a(ids, num_experts, block_m), device, reps, graph=True
            )
        for name, forced in (
            ("pairs", PAIR_TILING),
            ("blocks", pick_tiling(num_tokens * top_k, num_experts, hidden, inter, device)),
        ):
            row[f"{name}_graph_ms"] = time_ms(
                lambda t=forced: fused_moe(x, w13, w2, weights, ids, tiling=t), device, reps, graph=True
            )
        with torch.device(device):
            router = make_router(shape, gen)
        ref_route = router(x)
        router.use_kernel = True
        route = router(x)
        row["router_same_experts"] = bool(torch.equal(route[1], ref_route[1]))
        row["router_max_weight_diff"] = float((route[0] - ref_route[0]).abs().max())
        for name, kernel in (("torch", False), ("kernel", True)):
            router.use_kernel = kernel
            row[f"router_{name}_graph_ms"] = time_ms(lambda: router(x), device, reps, graph=True)
        row["roofline_ms"] = weight_bytes / (bandwidth * 1e6)
        row["graph_vs_roofline"] = row["kernel_graph_ms"] / row["roofline_ms"]
    row["speedup_vs_loop"] = row["loop_ms"] / row.get("kernel_graph_ms", row["kernel_ms"])
    if sweep:
        row["sweep_graph_ms"] = {
            t.name: round(
                time_ms(
                    lambda t=t: fused_moe(x, w13, w2, weights, ids, tiling=t), device, reps, graph=device.type == "cuda"
                ),
                4,
            )
            for t in SWEEP
            if t.block_m <= max(16, triton.next_power_of_2(num_tokens * top_k))
        }
        if num_tokens <= 4:
            row["sweep_graph_ms"].update(
                {
                    t.name: round(
                        time_ms(
                            lambda t=t: fused_moe(x, w13, w2, weights, ids, tiling=t),
                            device,
                            reps,
                            graph=device.type == "cuda",
                        ),
                        4,
                    )
                    for t in PAIR_CANDIDATES
                }
            )
        row["sweep_best"] = min(row["sweep_graph_ms"], key=row["sweep_graph_ms"].get)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=["v2-lite", "v3-tp8"], choices=sorted(SHAPES))
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
    rows = [bench_case(s, t, device, dtype, args.reps, bandwidth, args.sweep) for s in shapes for t in args.tokens]

    print(
        f"{'shape':<9}{'T':>5}{'active':>7}{'loop ms':>10}{'kernel ms':>11}{'graph ms':>10}"
        f"{'roofline':>10}{'speedup':>9}{'max diff':>10}"
    )
    for r in rows:
        print(
            f"{r['shape']:<9}{r['tokens']:>5}{r['active_experts']:>7}{r['loop_ms']:>10.3f}{r['kernel_ms']:>11.3f}"
            f"{r.get('kernel_graph_ms', float('nan')):>10.3f}{r.get('roofline_ms', float('nan')):>10.3f}"
            f"{r['speedup_vs_loop']:>9.1f}{r['max_abs_diff_vs_loop']:>10.2e}"
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    tag = "cuda" if device.type == "cuda" else "cpu"
    out = args.out or Path("benchmarks/results") / f"fused_moe_{tag}.json"
    result = {
        **result_header("fused_moe", name, command=" ".join(["python", *sys.argv])),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "interpreted": os.environ.get("TRITON_INTERPRET") == "1",
        "copy_bandwidth_gbs": bandwidth,
        "shapes": {s: dict(zip(("experts", "top_k", "hidden", "intermediate"), SHAPES[s])) for s in shapes},
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
