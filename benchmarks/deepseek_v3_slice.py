"""DeepSeek-V3/R1 and V3.2 full-width slices (hidden 7168, MLA, 256 experts top-8; V3.2 adds the
lightning indexer and sparse MLA) with dummy weights in block FP8 or bf16: decode time per MoE layer
at several batch sizes and context lengths, against the byte roofline of a layer.

Per-layer time is the difference between two slices of different depth run the same way (CUDA-graph
decode), divided by the layer difference, so the embedding, LM head and sampler cancel out. The byte
roofline of one MoE layer at batch 1 is what it must read: attention, router and shared expert whole,
plus the top-8 routed experts' share, plus the cache entries the step reads (V3: every latent of
the context; V3.2: index_topk latents and every indexer key), over the measured copy bandwidth.
V3.2's point is that its decode cost stays nearly flat as the context grows: --contexts 4096 32768
131072 measures that (prefill runs in chunks of --prefill-chunk tokens to bound the indexer's scores).

    python benchmarks/deepseek_v3_slice.py --quantization auto none --out benchmarks/results/v3_slice_h100.json
    python benchmarks/deepseek_v3_slice.py --model v3.2 --quantization auto --batches 1 \
        --contexts 4096 32768 131072 --out benchmarks/results/v32_slice_h100.json
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
from seekd.models.published_configs import V3, V3_2

MODELS = {"v3": V3, "v3.2": V3_2}


def slice_config(model: str, num_layers: int) -> dict:
    """The model's real dimensions with every layer a MoE layer (the first three are dense in both)."""
    config = MODELS[model]
    return {**config, "num_hidden_layers": num_layers, "first_k_dense_replace": 0, "num_nextn_predict_layers": 0}


def layer_bytes_batch1(model: str, layer: torch.nn.Module, context: int) -> int:
    """Bytes one decode step of one token reads in this layer: everything but the routed experts,
    top_k of their E stacks, and the bf16 cache entries it attends to (V3.2: index_topk latents, and
    the indexer key of every token)."""
    config = MODELS[model]
    moe = layer.mlp
    assert isinstance(moe, SparseMoE)
    routed = {id(p) for p in moe.experts.parameters()}
    rest = sum(p.nbytes for p in layer.parameters() if id(p) not in routed)
    experts = sum(p.nbytes for p in moe.experts.parameters()) * moe.gate.top_k // moe.gate.weight.shape[0]
    latent_row = (config["kv_lora_rank"] + config["qk_rope_head_dim"]) * 2
    if "index_topk" not in config:
        return rest + experts + latent_row * context
    return rest + experts + latent_row * min(context, config["index_topk"]) + config["index_head_dim"] * 2 * context


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


def build(num_layers: int, context: int, quantization: str, fp8_gemm: str, args: argparse.Namespace) -> LLM:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(slice_config(args.model, num_layers)))
        return LLM(
            tmp,
            load_format="dummy",
            dtype="bfloat16",
            quantization=quantization,
            fp8_gemm=fp8_gemm,
            max_model_len=context + args.steps + 64,
            max_num_seqs=max(args.batches),
            max_num_batched_tokens=max(args.prefill_chunk, max(args.batches)),
            gpu_memory_utilization=0.85,
            show_progress=False,
        )


def measure(context: int, quantization: str, fp8_gemm: str, args: argparse.Namespace, bandwidth: float) -> dict:
    times: dict[int, dict[int, float]] = {}
    layer_bytes = 0
    for layers in (args.layers[0], args.layers[1]):
        llm = build(layers, context, quantization, fp8_gemm, args)
        layer_bytes = layer_bytes_batch1(args.model, llm.engine.runner.model.model.layers[0], context)
        times[layers] = {b: step_ms(llm, b, context, args.steps) for b in args.batches}
        del llm
        torch.cuda.empty_cache()
    lo, hi = args.layers
    per_layer = {b: (times[hi][b] - times[lo][b]) / (hi - lo) for b in args.batches}
    roofline_ms = layer_bytes / (bandwidth * 1e9) * 1e3
    return {
        "context": context,
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
    parser.add_argument("--model", choices=list(MODELS), default="v3", help="v3 (dense MLA) or v3.2 (sparse)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512], help="context lengths decoded at")
    parser.add_argument("--prefill-chunk", type=int, default=2048, help="tokens per prefill step")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    bandwidth = measure_copy_bandwidth("cuda") / 1e9  # GB/s
    runs = []
    for context in args.contexts:
        for quantization in args.quantization:
            for fp8_gemm in args.fp8_gemm if quantization != "none" else ["auto"]:
                run = measure(context, quantization, fp8_gemm, args, bandwidth)
                runs.append(run)
                print(
                    f"{args.model} ctx {context} {quantization:5s} {fp8_gemm:6s} per layer: "
                    + ", ".join(f"bs{b} {t:.3f} ms" for b, t in run["per_layer_ms"].items())
                    + f"; roofline bs1 {run['byte_roofline_ms_batch1']:.3f} ms "
                    f"({run['layer_bytes_batch1'] / 1e6:.0f} MB), ratio {run['batch1_vs_roofline'] or 0:.2f}"
                )
    result = {
        **result_header("deepseek_v3_slice", torch.cuda.get_device_name()),
        "model": args.model,
        "copy_bandwidth_gbs": bandwidth,
        "layers_compared": args.layers,
        "runs": runs,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
