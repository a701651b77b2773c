"""Decode on the CPU: a 1.5B shape (R1-Distill-Qwen-1.5B) with its decoder-layer projections and LM
head in float32, bf16, int8 rows (`--quantization int8`) and INT4 groups of 128 (AWQ/GPTQ through
torch's int4 CPU kernel) - tokens/s at batch 1 and 8 over the products, which dominate a CPU decode
step. The layers are seekd's own (ReplicatedLinear built with each QuantConfig), so the timed path is
the engine's. `--layers N` times N decoder layers and scales to the model's 28 (the projections of
every layer have the same shapes); attention and norms are left out.

    python benchmarks/cpu_quant.py --layers 2 --reps 2 --out benchmarks/results/cpu_quant_2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from seekd.bench.report import host_info, load_average, result_header
from seekd.layers.build_scope import building_with
from seekd.layers.linear import ReplicatedLinear
from seekd.layers.quantization import QuantConfig

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM, LAYERS, VOCAB = 1536, 8960, 12, 2, 128, 28, 151936
FORMATS = {
    "float32": (torch.float32, QuantConfig()),
    "bf16": (torch.bfloat16, QuantConfig()),
    "int8": (torch.bfloat16, QuantConfig(linear="int8", online=True, scheme="int8")),
    "int4 g128": (torch.bfloat16, QuantConfig(linear="int4", int4_gemm="cpu", group_size=128, scheme="awq")),
}


def layer_shapes() -> list[tuple[int, int]]:
    """[N, K] of one decoder layer's fused projections: qkv, o, gate_up, down."""
    return [
        ((HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN),
        (HIDDEN, HEADS * HEAD_DIM),
        (2 * INTER, HIDDEN),
        (HIDDEN, INTER),
    ]


def build(shape: tuple[int, int], dtype: torch.dtype, quant: QuantConfig) -> ReplicatedLinear:
    n, k = shape
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with building_with(quant):
            layer = ReplicatedLinear(k, n)
    finally:
        torch.set_default_dtype(previous)
    if quant.linear == "int8":
        layer.weight_loader(layer.weight, torch.randn(n, k) * 0.02)
    elif quant.linear == "int4":
        layer.weight.data.copy_(torch.randint(-(2**31), 2**31, layer.weight.shape, dtype=torch.int32))
        layer.weight_scale.data.fill_(0.004)
        layer.weight_zero.data.fill_(8)
    else:
        layer.weight.data.normal_(0.0, 0.02)
    return layer


def tokens_per_s(layers: list[ReplicatedLinear], batch: int, dtype: torch.dtype, scale: float, reps: int) -> float:
    xs = {layer.in_features: torch.randn(batch, layer.in_features, dtype=dtype) for layer in layers}
    with torch.inference_mode():
        for layer in layers:  # warm-up (the int4 kernel packs its weights on first use)
            layer(xs[layer.in_features])
        start = time.perf_counter()
        for _ in range(reps):
            for layer in layers:
                layer(xs[layer.in_features])
        step_s = (time.perf_counter() - start) / reps
    return batch / (step_s * scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=LAYERS, help="decoder layers to time (scaled to 28)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_quant.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.formats:
        dtype, quant = FORMATS[name]
        layers = [build(s, dtype, quant) for _ in range(args.layers) for s in layer_shapes()]
        head = build((VOCAB, HIDDEN), dtype, quant)
        weight_bytes = sum(layer.weight_bytes for layer in layers) * LAYERS / args.layers + head.weight_bytes
        for batch in args.batches:
            body = tokens_per_s(layers, batch, dtype, LAYERS / args.layers, args.reps)
            lm_head = tokens_per_s([head], batch, dtype, 1.0, args.reps)
            tok_s = 1.0 / (1.0 / body + 1.0 / lm_head)
            rows.append({"format": name, "batch": batch, "tokens_per_s": tok_s, "weight_gib": weight_bytes / 2**30})
            print(f"{name:10s} batch {batch:2d}: {tok_s:8.2f} tokens/s  ({weight_bytes / 2**30:.2f} GiB of weights)")
        del layers, head
    result = {
        **result_header("cpu_quant", host_info().get("cpu", "cpu")),
        "threads": args.threads,
        "load_average_1m": load_average(),  # other work on the machine slows every row alike
        "layers_timed": args.layers,
        "note": "decoder projections + LM head of a 1.5B shape, scaled to 28 layers; no attention or norms",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
