"""DeepSeek-V3's linear layers with block-FP8 weights against bf16 F.linear (cuBLAS), per shape [N, K]
and token count M:
  linear     - F.linear on the bf16 weight (the reference's speed; twice the weight bytes)
  w8a16      - block_fp8_matmul, codes decoded in registers, bf16 tensor cores (the sm_80 path)
  w8a8       - block_fp8_matmul with activations quantized per 128 channels, FP8 tensor cores (sm_89+)
  gemv       - block_fp8_gemv at M=1, every candidate tiling (the best one reported)
Median over CUDA-graph replays of a pass over enough copies of the weight to exceed L2 several times,
so that weights stream from memory as in a model's forward pass. At M=1 the table gives achieved GB/s
of the bytes read and the ratio to the bytes' time at the copy bandwidth measured in the same run; at
larger M TFLOP/s. Each path's relative error against F.linear on the dequantized weight is recorded.
`--sweep` also times a set of GEMM tilings per case (to tune pick_fp8_gemm_config). w8a8 runs where
the GPU has FP8 tensor cores. `--tiny --device cpu` runs small shapes in float32 through Triton's
interpreter, w8a16 and the GEMV only (a smoke test of the script, not a measurement).

    python benchmarks/fp8_gemm.py --out benchmarks/results/fp8_gemm_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

if "--tiny" in sys.argv and not os.environ.get("TRITON_INTERPRET"):
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: kernels run on the CPU

import torch
import torch.nn.functional as F
import triton

from seekd.bench.report import result_header
from seekd.kernels.fp8_gemm import (
    FP8_GEMV_CANDIDATES,
    Fp8GemmConfig,
    block_fp8_gemv,
    block_fp8_matmul,
    default_fp8_mode,
    pick_fp8_gemm_config,
)
from seekd.layers.quantization import dequantize_block_fp8, quantize_weight_fp8_blocks

# [N, K] of DeepSeek-V3/R1's projections on one GPU
SHAPES = {
    "q_b": (24576, 1536),  # 128 heads x 192 from q_lora_rank 1536
    "q_a+kv_a": (2112, 7168),  # fused q_a (1536) and kv_a (512 + 64 rope) from hidden 7168
    "o_proj": (7168, 16384),  # 128 heads x 128 back to hidden
    "gate_up": (36864, 7168),  # the dense layers' gate and up, 2 x 18432
    "down": (7168, 18432),
    "tiny_a": (129, 200),
    "tiny_b": (300, 1000),
}
ROTATION_BYTES = 256 << 20  # about five H100 L2 caches of weights per timed pass
SWEEP = [
    Fp8GemmConfig(bm, bn, 128, split_k=split, num_warps=warps, num_stages=stages)
    for bm, bn, split, warps, stages in (
        (16, 32, 1, 4, 5),
        (16, 64, 1, 4, 4),
        (16, 128, 1, 4, 4),
        (16, 64, 4, 4, 4),
        (32, 64, 1, 4, 4),
        (64, 64, 1, 4, 4),
        (64, 128, 1, 4, 3),
        (64, 128, 1, 8, 4),
        (128, 128, 1, 8, 3),
        (128, 256, 1, 8, 3),
    )
]


def device_tag(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'h100', 'NVIDIA A100-SXM4-80GB' -> 'a100', 'NVIDIA GeForce RTX 4090' -> '4090'."""
    words = [w for w in re.split(r"[\s\-_]+", name.lower()) if w not in ("nvidia", "geforce", "rtx", "tesla")]
    return next((w for w in words if any(c.isdigit() for c in w)), "cuda")


def time_ms(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median ms of `fn`, replayed as a CUDA graph on the GPU (Python launch costs removed, as in
    captured decode steps), wall time on the CPU."""
    fn()  # compiles
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return 1e3 * (time.perf_counter() - start) / reps
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def copy_bandwidth_gbs(device: torch.device) -> float | None:
    """Device-to-device copy of 1 GiB: bytes read plus written per second."""
    if device.type != "cuda":
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, reps=10)
    return round(2 * src.numel() / ms / 1e6, 1)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


@dataclass
class ShapeWeights:
    """One shape's weight in the model dtype and in block FP8, each with enough clones that one timed
    pass reads ROTATION_BYTES (weights then stream from memory, not L2), and the FP8 weight's float32
    dequantization as the reference."""

    dense: list[tuple[torch.Tensor, ...]]
    fp8: list[tuple[torch.Tensor, ...]]
    reference: torch.Tensor
    device: torch.device
    reps: int

    @classmethod
    def random(cls, n: int, k: int, dtype: torch.dtype, device: torch.device, reps: int) -> ShapeWeights:
        gen = torch.Generator(device).manual_seed(n + k)
        weight = (torch.randn(n, k, generator=gen, device=device) * 0.02).to(dtype)
        codes, scale = quantize_weight_fp8_blocks(weight)
        reference = dequantize_block_fp8(codes, scale, (128, 128), torch.float32)
        return cls(cls._rotation((weight,), device), cls._rotation((codes, scale), device), reference, device, reps)

    @staticmethod
    def _rotation(weights: tuple[torch.Tensor, ...], device: torch.device) -> list[tuple[torch.Tensor, ...]]:
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        count = triton.cdiv(ROTATION_BYTES, nbytes) if device.type == "cuda" else 1
        return [weights] + [tuple(w.clone() for w in weights) for _ in range(count - 1)]

    def ms(self, product: Callable[..., object], x: torch.Tensor, fp8: bool = True) -> float:
        """Median ms of product(x, *weights) for one weight."""
        copies = self.fp8 if fp8 else self.dense

        def one_pass() -> None:
            for weights in copies:
                product(x, *weights)

        return time_ms(one_pass, self.device, self.reps) / len(copies)


def bench_case(
    weights: ShapeWeights, shape: str, m: int, modes: list[str], sweep: bool, bandwidth: float | None
) -> dict:
    (weight,), (codes, scale) = weights.dense[0], weights.fp8[0]
    n, k = codes.shape
    x = torch.randn(m, k, device=weights.device).to(weight.dtype)
    ref = F.linear(x.float(), weights.reference)
    io_bytes = (m * k + m * n) * x.element_size()
    row: dict = {"shape": shape, "n": n, "k": k, "tokens": m}
    row["linear_ms"] = weights.ms(F.linear, x, fp8=False)
    row["linear_bytes"] = weight.numel() * weight.element_size() + io_bytes
    row["fp8_bytes"] = codes.numel() + scale.numel() * scale.element_size() + io_bytes
    for mode in modes:
        row[f"{mode}_config"] = pick_fp8_gemm_config(m, n, k, weights.device).name
        row[f"{mode}_ms"] = weights.ms(partial(block_fp8_matmul, mode=mode), x)
        row[f"{mode}_rel_err"] = relative_error(block_fp8_matmul(x, codes, scale, mode=mode), ref)
        if sweep:
            fitting = [c for c in SWEEP if c.block_m <= max(16, triton.next_power_of_2(m))]
            row[f"{mode}_sweep_ms"] = {
                c.name: weights.ms(partial(block_fp8_matmul, mode=mode, config=c), x) for c in fitting
            }
    if m == 1:
        row["gemv_candidates_ms"] = {
            c.name: weights.ms(lambda x, w, s, c=c: block_fp8_gemv(x, w, s, None, c), x) for c in FP8_GEMV_CANDIDATES
        }
        best = min(FP8_GEMV_CANDIDATES, key=lambda c: row["gemv_candidates_ms"][c.name])
        row["gemv_best"], row["gemv_ms"] = best.name, row["gemv_candidates_ms"][best.name]
        row["gemv_rel_err"] = relative_error(block_fp8_gemv(x, codes, scale, None, best), ref)
        for path in ("linear", "gemv", *modes):
            row[f"{path}_gbs"] = row["linear_bytes" if path == "linear" else "fp8_bytes"] / row[f"{path}_ms"] / 1e6
        if bandwidth:
            row["fp8_roofline_ms"] = row["fp8_bytes"] / (bandwidth * 1e6)
            row["gemv_vs_roofline"] = row["gemv_ms"] / row["fp8_roofline_ms"]
    else:
        for path in ("linear", *modes):
            row[f"{path}_tflops"] = 2 * m * n * k / row[f"{path}_ms"] / 1e9
    return row


def rounded(value: object) -> object:
    if isinstance(value, dict):
        return {key: rounded(v) for key, v in value.items()}
    return float(f"{value:.4g}") if isinstance(value, float) else value


def print_table(rows: list[dict]) -> None:
    paths = ("linear", "w8a16", "w8a8", "gemv")
    print(f"{'shape':<10}{'M':>6}" + "".join(f"{p + ' ms':>11}" for p in paths) + "".join(f"{p:>9}" for p in paths))
    nan = float("nan")
    for r in rows:
        unit = "gbs" if r["tokens"] == 1 else "tflops"
        times = "".join(f"{r.get(f'{p}_ms', nan):>11.4f}" for p in paths)
        rates = "".join(f"{r.get(f'{p}_{unit}', nan):>9.1f}" for p in paths)
        print(f"{r['shape']:<10}{r['tokens']:>6}{times}{rates} {'GB/s' if unit == 'gbs' else 'TFLOP/s'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=["q_b", "q_a+kv_a", "o_proj", "gate_up", "down"])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 64, 256, 1024])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--sweep", action="store_true", help="also time every tiling in SWEEP")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes in float32 (CPU smoke test)")
    parser.add_argument("--commit", default=None, help="the commit of a copied source tree")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda" and not args.tiny:
        parser.error("the kernels need a CUDA GPU; on the CPU only --tiny runs (through Triton's interpreter)")
    unknown = set(args.shapes) - set(SHAPES)
    if unknown:
        parser.error(f"unknown shapes {sorted(unknown)}; choose from {sorted(SHAPES)}")
    shapes = ["tiny_a", "tiny_b"] if args.tiny else args.shapes
    dtype = torch.float32 if args.tiny else torch.bfloat16
    bandwidth = copy_bandwidth_gbs(device)
    modes = ["w8a16", "w8a8"] if default_fp8_mode(device) == "w8a8" else ["w8a16"]
    rows = []
    for shape in shapes:
        weights = ShapeWeights.random(*SHAPES[shape], dtype, device, args.reps)
        rows += [rounded(bench_case(weights, shape, m, modes, args.sweep, bandwidth)) for m in args.tokens]
        del weights  # the next shape's weights take its memory
    print_table(rows)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    tag = device_tag(name) if device.type == "cuda" else "cpu"
    out = args.out or Path("benchmarks/results") / f"fp8_gemm_{tag}.json"
    result = {
        **result_header("fp8_gemm", name, commit=args.commit),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "interpreted": os.environ.get("TRITON_INTERPRET") == "1",
        "copy_bandwidth_gbs": bandwidth,
        "shapes": {s: dict(zip(("n", "k"), SHAPES[s])) for s in shapes},
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
