"""Which CPU kernel runs a host-resident routed expert fastest: one R1 expert's gate/up product
[4096, 7168] at a few token counts, from its block-FP8 codes dequantized per call, a bf16 or float32
copy, or int8 rows through torch's `_weight_int8pack_mm`. The answer sets `--cpu-expert-format auto`
(seekd/layers/quantization/int8_rows.py).

    python benchmarks/cpu_expert_kernels.py --out benchmarks/results/cpu_expert_kernels.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from seekd.bench.report import host_info, result_header
from seekd.layers.quantization import quantize_fp8_blocks
from seekd.layers.quantization.int8_rows import quantize_int8_rows


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096, help="output rows (R1: 2 x moe_intermediate_size)")
    parser.add_argument("--cols", type=int, default=7168, help="input columns (R1: hidden_size)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    weight = torch.randn(args.rows, args.cols) * 0.02
    fp8 = quantize_fp8_blocks(weight)
    bf16 = weight.bfloat16()
    codes, scale = quantize_int8_rows(weight)
    scale_bf16 = scale.bfloat16()
    runs = []
    for tokens in args.tokens:
        x = torch.randn(tokens, args.cols)
        xb = x.bfloat16()
        kernels = {
            "fp8_dequantize_per_call_fp32": lambda x=x: F.linear(x, fp8.dequantize(torch.float32)),
            "bf16_copy": lambda xb=xb: F.linear(xb, bf16),
            "fp32_copy": lambda x=x: F.linear(x, weight),
            "int8pack_mm_bf16": lambda xb=xb: torch.ops.aten._weight_int8pack_mm(xb, codes, scale_bf16),
        }
        run = {"tokens": tokens, "ms": {name: best_ms(fn, args.repeats) for name, fn in kernels.items()}}
        runs.append(run)
        print(f"{tokens:4d} tokens: " + ", ".join(f"{k} {v:.1f} ms" for k, v in run["ms"].items()))
    host = host_info()
    result = {
        **result_header("cpu_expert_kernels", "cpu"),
        "cpu": host["cpu"],
        "cpu_cores": host["cpu_count"],
        "torch_cpu_threads": torch.get_num_threads(),
        "shape": [args.rows, args.cols],
        "runs": runs,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
