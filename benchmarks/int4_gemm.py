"""Batch-1 decode of R1-Distill-Qwen-7B and -32B shapes (dummy weights): the time of every decoder
layer's projections for one token, per weight format, against the time its bytes take at the copy
bandwidth measured in the same run (the byte roofline):
  bf16          - F.linear on bf16 weights (cuBLAS), 7B only (32B's bf16 weights fill the GPU)
  int4 g128     - AWQ/GPTQ at their usual groups of 128: the start-up-timed choice of the INT4 GEMV
                  tilings and the W4A16 GEMM at M=1 (both reported)
  int4 g128 act - GPTQ act-order: the same plus the gather of x by the input permutation
  int4 g32      - groups of 32 (GGUF Q4_0 converted at load)
Each pass runs all layers' distinct weights (so they stream from memory, not L2) as a CUDA graph; the
LM head and attention are left out (the same for every format). Also the W4A16 GEMM's time at 256
tokens per layer pass (the prefill / large-batch side). llama.cpp's Q4_K_M figure for the 7B shape on
the H100, 3.70 ms/token (whole model), is recorded beside it for reference.

    python benchmarks/int4_gemm.py --out benchmarks/results/int4_gemm_h100.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from seekd.bench.report import result_header
from seekd.kernels.gemv import graph_time_ms
from seekd.kernels.int4_gemm import INT4_GEMV_CANDIDATES, int4_gemv, w4a16_matmul

# hidden, intermediate, q heads, kv heads, head dim, layers
MODELS = {
    "r1-distill-qwen-7b": (3584, 18944, 28, 4, 128, 28),
    "r1-distill-qwen-32b": (5120, 27648, 40, 8, 128, 64),
}
LLAMA_CPP_Q4_K_M_MS = {"r1-distill-qwen-7b": 3.70}  # H100, whole model, from the issue


def layer_shapes(hidden: int, inter: int, heads: int, kv_heads: int, head_dim: int) -> list[tuple[int, int]]:
    """[N, K] of one decoder layer's fused projections: qkv, o, gate_up, down."""
    return [
        ((heads + 2 * kv_heads) * head_dim, hidden),
        (hidden, heads * head_dim),
        (2 * inter, hidden),
        (hidden, inter),
    ]


def copy_bandwidth_gbs() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / graph_time_ms(lambda: dst.copy_(src), 10) / 1e6


def int4_layers(shapes: list[tuple[int, int]], layers: int, group: int, act_order: bool) -> list[tuple]:
    out = []
    for _ in range(layers):
        for n, k in shapes:
            qweight = torch.randint(-(2**31), 2**31, (k // 8, n), dtype=torch.int32, device="cuda")
            scales = torch.full((k // group, n), 0.004, dtype=torch.float16, device="cuda")
            zeros = torch.full((k // group, n), 8, dtype=torch.uint8, device="cuda")
            perm = torch.randperm(k, device="cuda") if act_order else None
            out.append((qweight, scales, zeros, perm))
    return out


def int4_pass(weights: list[tuple], x_of: dict[int, torch.Tensor], product: str) -> Callable[[], None]:
    def one_pass() -> None:
        for qweight, scales, zeros, perm in weights:
            x = x_of[qweight.shape[0] * 8]
            if perm is not None:
                x = x.index_select(-1, perm)
            if product == "gemm":
                w4a16_matmul(x, qweight, scales, zeros)
            else:
                int4_gemv(x, qweight, scales, zeros, None, INT4_GEMV_CANDIDATES[int(product)])

    return one_pass


def bench_int4(shapes: list[tuple[int, int]], layers: int, group: int, act_order: bool, bandwidth: float) -> dict:
    weights = int4_layers(shapes, layers, group, act_order)
    nbytes = sum(sum(t.nbytes for t in w if t is not None) for w in weights)
    ks = {k for _, k in shapes}
    x1 = {k: torch.randn(1, k, dtype=torch.bfloat16, device="cuda") for k in ks}
    timings = {"w4a16_matmul": graph_time_ms(int4_pass(weights, x1, "gemm"), 10)}
    for i, config in enumerate(INT4_GEMV_CANDIDATES):
        timings[config.name] = graph_time_ms(int4_pass(weights, x1, str(i)), 10)
    best = min(timings, key=timings.get)
    x256 = {k: torch.randn(256, k, dtype=torch.bfloat16, device="cuda") for k in ks}
    ms256 = graph_time_ms(int4_pass(weights, x256, "gemm"), reps=5)
    flops = 2 * 256 * sum(n * k for n, k in shapes) * layers
    del weights
    torch.cuda.empty_cache()
    return {
        "weight_gib": nbytes / 2**30,
        "batch1_ms": timings[best],
        "batch1_kernel": best,
        "roofline_ms": nbytes / bandwidth / 1e6,
        "ratio_to_roofline": timings[best] / (nbytes / bandwidth / 1e6),
        "batch1_ms_by_kernel": timings,
        "m256_ms": ms256,
        "m256_tflops": flops / ms256 / 1e9,
    }


def bench_bf16(shapes: list[tuple[int, int]], layers: int, bandwidth: float) -> dict:
    weights = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(layers) for n, k in shapes]
    nbytes = sum(w.nbytes for w in weights)
    x1 = {k: torch.randn(1, k, dtype=torch.bfloat16, device="cuda") for _, k in shapes}

    def one_pass() -> None:
        for w in weights:
            F.linear(x1[w.shape[1]], w)

    ms = graph_time_ms(one_pass, 10)
    weights.clear()
    torch.cuda.empty_cache()
    roofline = nbytes / bandwidth / 1e6
    return {"weight_gib": nbytes / 2**30, "batch1_ms": ms, "roofline_ms": roofline, "ratio_to_roofline": ms / roofline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--layers", type=int, default=None, help="decoder layers to run (default: the model's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    name = torch.cuda.get_device_name()
    tag = next((w for w in re.split(r"[\s\-_]+", name.lower()) if any(c.isdigit() for c in w)), "cuda")
    bandwidth = copy_bandwidth_gbs()
    rows = []
    for model in args.models:
        hidden, inter, heads, kv_heads, head_dim, layers = MODELS[model]
        layers = args.layers or layers
        shapes = layer_shapes(hidden, inter, heads, kv_heads, head_dim)
        formats = [("int4 g128", 128, False), ("int4 g128 act-order", 128, True), ("int4 g32", 32, False)]
        if model == "r1-distill-qwen-7b":
            formats.append(("bf16", 0, False))
        for fmt, group, act_order in formats:
            measured = (
                bench_int4(shapes, layers, group, act_order, bandwidth)
                if group
                else bench_bf16(shapes, layers, bandwidth)
            )
            row = {"model": model, "layers": layers, "format": fmt, **measured}
            row["llama_cpp_q4_k_m_ms"] = LLAMA_CPP_Q4_K_M_MS.get(model)
            rows.append(row)
            print(
                f"{model:22s} {fmt:20s} {row['weight_gib']:6.2f} GiB  batch-1 {row['batch1_ms']:7.3f} ms/token "
                f"(roofline {row['roofline_ms']:6.3f}, x{row['ratio_to_roofline']:.2f})"
                + (f"  m256 {row['m256_ms']:7.2f} ms {row['m256_tflops']:6.1f} TFLOP/s" if "m256_ms" in row else "")
            )
    result = {
        **result_header("int4_gemm", name),
        "copy_bandwidth_gbs": bandwidth,
        "note": "decoder-layer projections only (no LM head, attention, norms); "
        "roofline = weight bytes / copy bandwidth",
        "results": rows,
    }
    out = args.out or Path("benchmarks/results") / f"int4_gemm_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
