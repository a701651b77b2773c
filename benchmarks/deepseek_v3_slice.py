"""DeepSeek-V3/R1 full-width slice (hidden 7168, MLA, 256 experts top-8) with dummy weights in block
FP8 or bf16: decode time per MoE layer at several batch sizes, against the byte roofline of a layer.

Per-layer time is the difference between two slices of different depth run the same way (CUDA-graph
decode), divided by the layer difference, so the embedding, LM head and sampler cancel out. The byte
roofline of one MoE layer at batch 1 is what it must read: attention, router and shared expert whole,
plus the top-8 routed experts' share, plus the latent KV of the context, over the measured copy
bandwidth.

    python benchmarks/deepseek_v3_slice.py --quantization auto none --out benchmarks/results/v3_slice_h100.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from offline_throughput import measure_copy_bandwidth

from seekd import LLM, SamplingParams
from seekd.bench.report import result_header
from seekd.engine.request import EngineCoreRequest
from seekd.layers.moe import SparseMoE
from seekd.models.published_configs import V3


def slice_config(num_layers: int) -> dict:
    """V3's real dimensions with every layer a MoE layer (V3's first three are dense)."""
    return {**V3, "num_hidden_layers": num_layers, "first_k_dense_replace": 0, "num_nextn_predict_layers": 0}


def layer_bytes_batch1(layer: torch.nn.Module, context: int) -> int:
    """Bytes one decode step of one token reads in this layer: everything but the routed experts,
    top_k of their E stacks, and the context's latent cache entries."""
    moe = layer.mlp
    assert isinstance(moe, SparseMoE)
    routed = {id(p) for p in moe.experts.parameters()}
    rest = sum(p.nbytes for p in layer.parameters() if id(p) not in routed)
    experts = sum(p.nbytes for p in moe.experts.parameters()) * moe.gate.top_k // moe.gate.weight.shape[0]
    latent = (V3["kv_lora_rank"] + V3["qk_rope_head_dim"]) * 2 * context  # bf16 cache entries
    return rest + experts + latent


def step_ms(llm: LLM, batch: int, context: int, steps: int) -> float:
    engine = llm.engine
    vocab = engine.hf_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=steps + 8, ignore_eos=True)
    for i in range(batch):
        prompt = [(1000 + 7 * i + 13 * j) % vocab for j in range(context)]
        engine.add_request(
            EngineCoreRequest(request_id=f"b{batch}-{i}", prompt_token_ids=prompt, sampling_params=params)
        )
    while any(r.num_output_tokens < 2 for r in engine.scheduler.requests.values()):
        engine.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    elapsed = (time.perf_counter() - start) * 1e3 / steps
    while engine.has_unfinished_requests():
        engine.step()
    return elapsed


def build(num_layers: int, quantization: str, fp8_gemm: str, args: argparse.Namespace) -> LLM:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(slice_config(num_layers)))
        return LLM(
            tmp,
            load_format="dummy",
            dtype="bfloat16",
            quantization=quantization,
            fp8_gemm=fp8_gemm,
            max_model_len=args.context + args.steps + 64,
            max_num_seqs=max(args.batches),
            gpu_memory_utilization=0.85,
            show_progress=False,
        )


def measure(quantization: str, fp8_gemm: str, args: argparse.Namespace, bandwidth: float) -> dict:
    times: dict[int, dict[int, float]] = {}
    layer_bytes = 0
    for layers in (args.layers[0], args.layers[1]):
        llm = build(layers, quantization, fp8_gemm, args)
        layer_bytes = layer_bytes_batch1(llm.engine.runner.model.model.layers[0], args.context)
        times[layers] = {b: step_ms(llm, b, args.context, args.steps) for b in args.batches}
        del llm
        torch.cuda.empty_cache()
    lo, hi = args.layers
    per_layer = {b: (times[hi][b] - times[lo][b]) / (hi - lo) for b in args.batches}
    roofline_ms = layer_bytes / (bandwidth * 1e9) * 1e3
    return {
        "quantization": quantization,
        "fp8_gemm": fp8_gemm,
        "step_ms": {str(k): {str(b): t for b, t in v.items()} for k, v in times.items()},
        "per_layer_ms": {str(b): t for b, t in per_layer.items()},
        "tokens_per_s_per_layer": {str(b): b / (t * 1e-3) for b, t in per_layer.items()},
        "layer_bytes_batch1": layer_bytes,
        "byte_roofline_ms_batch1": roofline_ms,
        "batch1_vs_roofline": per_layer[1] / roofline_ms if 1 in per_layer else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantization", nargs="+", default=["auto", "none"], help="auto = block FP8, none = bf16")
    parser.add_argument("--fp8-gemm", nargs="+", default=["auto"], help="FP8 product modes to measure")
    parser.add_argument("--layers", type=int, nargs=2, default=[1, 2], help="the two slice depths compared")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    bandwidth = measure_copy_bandwidth("cuda") / 1e9  # GB/s
    runs = []
    for quantization in args.quantization:
        for fp8_gemm in args.fp8_gemm if quantization != "none" else ["auto"]:
            run = measure(quantization, fp8_gemm, args, bandwidth)
            runs.append(run)
            print(
                f"{quantization:5s} {fp8_gemm:6s} per layer: "
                + ", ".join(f"bs{b} {t:.3f} ms" for b, t in run["per_layer_ms"].items())
                + f"; roofline bs1 {run['byte_roofline_ms_batch1']:.3f} ms "
                f"({run['layer_bytes_batch1'] / 1e6:.0f} MB), ratio {run['batch1_vs_roofline']:.2f}"
            )
    result = {
        **result_header("deepseek_v3_slice", torch.cuda.get_device_name()),
        "copy_bandwidth_gbs": bandwidth,
        "context": args.context,
        "layers_compared": args.layers,
        "runs": runs,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
