"""Hybrid CPU/GPU MoE (issue #21): R1 and V4-Flash full-width slices with 0 %, 50 % and 90 % of every
layer's routed experts in host RAM (`--cpu-experts`), dummy weights in the checkpoint's precision.

Per-layer time is the difference between two slices of different depth run the same way, divided by
the layer difference (embedding, head and sampler cancel). Reported per placement: decode tok/s per
layer at batch 1 and 8, the projected whole-model decode tok/s (the slice's fixed cost plus the
full model's MoE layers at the per-layer time), and prefill tok/s of a 2k prompt. The result file
records the GPU, the CPU model, its cores and torch's CPU threads.

    python benchmarks/hybrid_moe.py --out benchmarks/results/hybrid_moe_h100.json
    python benchmarks/hybrid_moe.py --tiny --device cpu    # smoke run of the script itself
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from deepseek_v3_slice import slice_config as r1_slice_config
from v4_flash_slice import slice_config as v4_slice_config

from seekd import LLM, SamplingParams
from seekd.bench.report import host_info, result_header
from seekd.engine.request import EngineCoreRequest
from seekd.models.published_configs import V3, V4_FLASH, V4_HASH_LAYERS

# full model: MoE layers (R1: 61 layers, the first three dense; V4-Flash: every layer)
FULL_MOE_LAYERS = {
    "r1": V3["num_hidden_layers"] - V3["first_k_dense_replace"],
    "v4-flash": V4_FLASH["num_hidden_layers"],
}
R1_TINY = {
    "hidden_size": 256,
    "moe_intermediate_size": 128,
    "intermediate_size": 256,
    "q_lora_rank": 128,
    "kv_lora_rank": 128,
    "num_attention_heads": 4,
    "n_routed_experts": 16,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "vocab_size": 1024,
}


def slice_config(model: str, num_layers: int, tiny: bool) -> dict:
    if model == "r1":
        config = r1_slice_config("v3", num_layers)
        return {**config, **(R1_TINY if tiny else {})}
    return v4_slice_config(V4_HASH_LAYERS, num_layers, tiny)  # score-routed layers, CSA and HCA in turn


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(model: str, num_layers: int, cpu_experts: int, args: argparse.Namespace) -> LLM:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(slice_config(model, num_layers, args.tiny)))
        return LLM(
            tmp,
            load_format="dummy",
            device=args.device,
            dtype="bfloat16" if args.device.startswith("cuda") else "float32",
            cpu_experts=str(cpu_experts),
            cpu_expert_format=args.cpu_expert_format,
            max_model_len=args.prefill + args.context + args.steps + 64,
            max_num_seqs=max(args.batches),
            max_num_batched_tokens=max(args.prefill, max(args.batches)),
            gpu_memory_utilization=0.85,
            cpu_kv_cache_gib=0.25,
            show_progress=False,
        )


def add_requests(llm: LLM, batch: int, prompt_len: int, max_tokens: int, tag: str) -> None:
    vocab = llm.engine.hf_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    for i in range(batch):
        prompt = [(1000 + 7 * i + 13 * j) % vocab for j in range(prompt_len)]
        llm.engine.add_request(
            EngineCoreRequest(request_id=f"{tag}-{i}", prompt_token_ids=prompt, sampling_params=params)
        )


def decode_ms(llm: LLM, batch: int, args: argparse.Namespace) -> float:
    engine = llm.engine
    add_requests(llm, batch, args.context, args.steps + 8, f"d{batch}")
    while any(r.num_output_tokens < 2 for r in engine.scheduler.requests.values()):
        engine.step()
    synchronize(args.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    synchronize(args.device)
    elapsed = (time.perf_counter() - start) * 1e3 / args.steps
    while engine.has_unfinished_requests():
        engine.step()
    return elapsed


def prefill_ms(llm: LLM, args: argparse.Namespace) -> float:
    """One prompt of args.prefill tokens in one step, best of three."""
    best = float("inf")
    for attempt in range(3):
        add_requests(llm, 1, args.prefill, 1, f"p{attempt}")
        synchronize(args.device)
        start = time.perf_counter()
        llm.engine.step()
        synchronize(args.device)
        best = min(best, (time.perf_counter() - start) * 1e3)
        while llm.engine.has_unfinished_requests():
            llm.engine.step()
    return best


def measure(model: str, fraction: float, args: argparse.Namespace) -> dict:
    num_experts = slice_config(model, 1, args.tiny)["n_routed_experts"]
    cpu_experts = round(fraction * num_experts)
    lo, hi = args.layers
    decode: dict[int, dict[int, float]] = {}
    prefill: dict[int, float] = {}
    for depth in (lo, hi):
        llm = build(model, depth, cpu_experts, args)
        decode[depth] = {b: decode_ms(llm, b, args) for b in args.batches}
        prefill[depth] = prefill_ms(llm, args)
        del llm
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    per_layer = {b: (decode[hi][b] - decode[lo][b]) / (hi - lo) for b in args.batches}
    fixed = {b: decode[lo][b] - lo * per_layer[b] for b in args.batches}
    whole = {b: fixed[b] + FULL_MOE_LAYERS[model] * per_layer[b] for b in args.batches}
    prefill_layer = (prefill[hi] - prefill[lo]) / (hi - lo)
    return {
        "model": model,
        "cpu_experts_per_layer": cpu_experts,
        "routed_experts_per_layer": num_experts,
        "fraction_on_cpu": cpu_experts / num_experts,
        "decode_step_ms": {str(d): {str(b): t for b, t in v.items()} for d, v in decode.items()},
        "decode_ms_per_layer": {str(b): t for b, t in per_layer.items()},
        "decode_tok_s_per_layer": {str(b): b / (t * 1e-3) if t > 0 else None for b, t in per_layer.items()},
        "projected_model_decode_tok_s": {str(b): b / (t * 1e-3) if t > 0 else None for b, t in whole.items()},
        "prefill_tokens": args.prefill,
        "prefill_step_ms": {str(d): t for d, t in prefill.items()},
        "prefill_tok_s_per_layer": args.prefill / (prefill_layer * 1e-3) if prefill_layer > 0 else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(FULL_MOE_LAYERS), default=list(FULL_MOE_LAYERS))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.5, 0.9], help="routed experts on CPU")
    parser.add_argument("--cpu-expert-format", default="auto", choices=("auto", "checkpoint", "int8"))
    parser.add_argument("--layers", type=int, nargs=2, default=[2, 4], help="the two slice depths compared")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--context", type=int, default=512, help="prompt tokens before the timed decode steps")
    parser.add_argument("--prefill", type=int, default=2048, help="prompt tokens of the prefill measurement")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny dimensions: a smoke run of this script")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.tiny:
        args.context, args.prefill, args.steps = min(args.context, 32), min(args.prefill, 64), min(args.steps, 3)
    runs = []
    for model in args.models:
        for fraction in args.fractions:
            run = measure(model, fraction, args)
            runs.append(run)
            print(
                f"{model:8s} {run['fraction_on_cpu']:4.0%} experts on CPU: decode per layer "
                + ", ".join(f"bs{b} {t:.2f} ms" for b, t in run["decode_ms_per_layer"].items())
                + "; projected model "
                + ", ".join(f"bs{b} {t or 0:.1f} tok/s" for b, t in run["projected_model_decode_tok_s"].items())
                + f"; prefill {args.prefill} tok {run['prefill_tok_s_per_layer'] or 0:.0f} tok/s per layer"
            )
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    host = host_info()
    result = {
        **result_header("hybrid_moe", device),
        "cpu": host["cpu"],
        "cpu_cores": host["cpu_count"],
        "torch_cpu_threads": torch.get_num_threads(),
        "tiny": args.tiny,
        "cpu_expert_format": args.cpu_expert_format,
        "layers_compared": args.layers,
        "runs": runs,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
