"""Offline throughput of the in-process engine on dummy weights of a public model shape.

Reports output tok/s and total tok/s for N seeded random requests (ignore_eos), batch-1 decode
ms/token against the roofline (weight bytes / measured device copy bandwidth), TTFT of a 1024-token
prompt and, optionally, the same workload through Hugging Face transformers on a seeded subset.
Writes JSON to benchmarks/results/.

    python benchmarks/offline_throughput.py --shape r1-distill-qwen-7b --num-requests 256
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from seekd import LLM, SamplingParams
from seekd.bench.report import result_header
from seekd.layers.moe import SparseMoE
from seekd.models.published_configs import DISTILL

SHAPES = {
    "r1-distill-qwen-7b": DISTILL["DeepSeek-R1-Distill-Qwen-7B"],
    "r1-distill-qwen-1.5b": DISTILL["DeepSeek-R1-Distill-Qwen-1.5B"],
    "deepseek-v2-lite": {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "hidden_size": 2048,
        "intermediate_size": 10944,
        "moe_intermediate_size": 1408,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "kv_lora_rank": 512,
        "q_lora_rank": None,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_experts_per_tok": 6,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "topk_method": "greedy",
        "scoring_func": "softmax",
        "norm_topk_prob": False,
        "routed_scaling_factor": 1.0,
        "n_group": 1,
        "topk_group": 1,
        "max_position_embeddings": 163840,
        "rope_theta": 10000.0,
        "rope_scaling": {
            "type": "yarn",
            "factor": 40,
            "original_max_position_embeddings": 4096,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
        },
        "rms_norm_eps": 1e-6,
        "vocab_size": 102400,
        "tie_word_embeddings": False,
        "bos_token_id": 100000,
        "eos_token_id": 100001,
        "torch_dtype": "bfloat16",
    },
}


def measure_copy_bandwidth(device: str) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n / sorted(times)[len(times) // 2]


def weight_bytes(llm: LLM) -> int:
    """Bytes one batch-1 decode step must read: every parameter except the input embedding table,
    and of each MoE layer's routed experts only the top_k that the token is sent to."""
    model = llm.engine.runner.model
    embed = model.model.embed_tokens.weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if model.lm_head.weight is not embed:
        total -= embed.numel() * embed.element_size()
    for module in model.modules():
        if isinstance(module, SparseMoE):
            experts = module.experts
            routed = sum(p.numel() * p.element_size() for p in experts.parameters())
            total -= routed - routed * module.gate.top_k // experts.w13_weight.shape[0]
    return total


def random_workload(n: int, seed: int, in_range: tuple[int, int], out_range: tuple[int, int], vocab: int):
    rng = random.Random(seed)
    prompts, outputs = [], []
    for _ in range(n):
        prompts.append([rng.randrange(1000, vocab - 1000) for _ in range(rng.randint(*in_range))])
        outputs.append(rng.randint(*out_range))
    return prompts, outputs


def timed(fn) -> tuple[float, object]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def bench_seekd(llm: LLM, prompts, outputs) -> dict:
    params = [SamplingParams(temperature=0.0, max_tokens=o, ignore_eos=True) for o in outputs]
    llm.generate(prompts[:4], params[:4])  # warm-up: kernels compiled, allocator primed
    elapsed, results = timed(lambda: llm.generate(prompts, params))
    out_tokens = sum(len(r.outputs[0].token_ids) for r in results)
    in_tokens = sum(len(p) for p in prompts)
    return {
        "elapsed_s": elapsed,
        "output_tokens": out_tokens,
        "output_tok_s": out_tokens / elapsed,
        "total_tok_s": (out_tokens + in_tokens) / elapsed,
    }


def bench_bs1_decode(llm: LLM, vocab: int) -> float:
    """ms per token of steady batch-1 decode: (time for 257 tokens - time for 1) / 256."""
    prompt = list(range(1000, 1032))
    one = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    many = SamplingParams(temperature=0.0, max_tokens=257, ignore_eos=True)
    llm.generate(prompt, many)
    t1 = min(timed(lambda: llm.generate(prompt, one))[0] for _ in range(3))
    tn = min(timed(lambda: llm.generate(prompt, many))[0] for _ in range(2))
    return (tn - t1) / 256 * 1e3


def bench_ttft(llm: LLM, vocab: int) -> float:
    rng = random.Random(7)
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    times = []
    for i in range(5):
        prompt = [rng.randrange(1000, vocab - 1000) for _ in range(1024)]  # fresh: no prefix hit
        times.append(timed(lambda p=prompt: llm.generate(p, params))[0])
        del i
    return sorted(times)[len(times) // 2] * 1e3


def bench_hf(folder: Path, prompts, outputs, device: str) -> dict:
    """transformers `generate` per prompt batch is padding-bound; its continuous batching
    (`generate_batch`, paged sdpa) is the fair comparison. Each is tried and reported on its own."""
    import transformers

    result: dict = {"hf_version": transformers.__version__, "hf_num_requests": len(prompts)}
    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device(device):  # random init on the GPU: minutes less than a 7B init on the CPU
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=torch.bfloat16, attn_implementation="paged|sdpa"
        ).eval()
    try:
        gen_config = transformers.GenerationConfig(
            max_new_tokens=max(outputs),
            do_sample=False,
            eos_token_id=-1,
            pad_token_id=0,
        )
        elapsed, out = timed(lambda: model.generate_batch(inputs=prompts, generation_config=gen_config))
        tokens = sum(len(r.generated_tokens) for r in out.values())
        result.update(
            hf_cb_elapsed_s=elapsed,
            hf_cb_output_tokens=tokens,
            hf_cb_output_tok_s=tokens / elapsed,
            hf_cb_note="max_new_tokens = longest output of the subset for every request",
        )
    except Exception as e:  # reported, not hidden: the comparison is part of the result
        result["hf_cb_error"] = f"{type(e).__name__}: {e}"
    return result


def make_model_folder(shape: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix=f"seekd-bench-{shape}-"))
    (folder / "config.json").write_text(json.dumps(SHAPES[shape]))
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="r1-distill-qwen-7b", choices=sorted(SHAPES))
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--input-len", type=int, nargs=2, default=(100, 1024))
    parser.add_argument("--output-len", type=int, nargs=2, default=(100, 1024))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument(
        "--quantization", default="auto", help="auto | none | fp8 (online block FP8 of the bf16 weights)"
    )
    parser.add_argument("--fp8-gemm", default="auto", help="auto | w8a8 | w8a16")
    parser.add_argument("--hf-requests", type=int, default=0, help="run transformers on this many requests")
    parser.add_argument("--out", default=None, help="result JSON path")
    parser.add_argument("--commit", default=None, help="commit id, where the tree has no .git")
    args = parser.parse_args()

    device = "cuda"
    folder = make_model_folder(args.shape)
    llm = LLM(
        str(folder),
        load_format="dummy",
        dtype="bfloat16",
        device=device,
        max_model_len=4096,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        attention_backend=args.attention_backend,
        quantization=args.quantization,
        fp8_gemm=args.fp8_gemm,
        show_progress=False,
    )
    vocab = SHAPES[args.shape]["vocab_size"]
    prompts, outputs = random_workload(args.num_requests, args.seed, args.input_len, args.output_len, vocab)

    bandwidth = measure_copy_bandwidth(device)
    wbytes = weight_bytes(llm)
    result = {
        **result_header("offline_throughput", torch.cuda.get_device_name(), commit=args.commit or None),
        "shape": args.shape,
        "dtype": "bfloat16",
        "quantization": args.quantization,
        "fp8_gemm": args.fp8_gemm,
        "attention_backend": llm.engine.runner.attn_backend.name,
        "num_requests": args.num_requests,
        "input_len": list(args.input_len),
        "output_len": list(args.output_len),
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "weight_bytes": wbytes,
        "roofline_ms_per_token": wbytes / bandwidth * 1e3,
        "batch1_gemv": llm.engine.runner.gemv_report,  # per weight shape: cuBLAS or Triton, and why
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"offline_{args.shape}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def stage(name: str, values: dict) -> None:
        """Record each stage as it finishes, so a run cut short still leaves its numbers."""
        result.update(values)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(
            f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()),
            flush=True,
        )

    stage("roofline", {"roofline_ms_per_token": result["roofline_ms_per_token"]})
    stage("batch-1 decode", {"bs1_ms_per_token": bench_bs1_decode(llm, vocab)})
    stage("ttft", {"ttft_1024_ms": bench_ttft(llm, vocab)})
    stage("throughput", bench_seekd(llm, prompts, outputs))
    if args.hf_requests:
        del llm
        torch.cuda.empty_cache()
        stage("transformers", bench_hf(folder, prompts[: args.hf_requests], outputs[: args.hf_requests], device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
