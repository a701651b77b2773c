"""Decode throughput with many LoRA adapters in one batch against the base model alone.

A 64-request batch (128-token prompts, 256 output tokens, ignore_eos) on dummy weights of a public
shape: first on an engine without LoRA, then on one serving adapters, with every request on the base
model and with the requests spread round-robin over 1, 8 and 32 distinct random rank-16 adapters on
all seven projections. Reports output tok/s and each run's slowdown against the base engine (target:
at most 15 % at 8 adapters). Writes JSON to benchmarks/results/.

    python benchmarks/lora_decode.py --shape r1-distill-qwen-7b
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from seekd import LLM, SamplingParams
from seekd.bench.report import result_header
from seekd.models.published_configs import DISTILL

SHAPES = {
    "r1-distill-qwen-7b": DISTILL["DeepSeek-R1-Distill-Qwen-7B"],
    "r1-distill-qwen-1.5b": DISTILL["DeepSeek-R1-Distill-Qwen-1.5B"],
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def projection_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(out, in) of each adapted projection of a Qwen2/Llama layer."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim", hidden // heads)
    kv = config.get("num_key_value_heads", heads) * head_dim
    inter = config["intermediate_size"]
    return {
        "q_proj": (heads * head_dim, hidden),
        "k_proj": (kv, hidden),
        "v_proj": (kv, hidden),
        "o_proj": (hidden, heads * head_dim),
        "gate_proj": (inter, hidden),
        "up_proj": (inter, hidden),
        "down_proj": (hidden, inter),
    }


def write_adapter(folder: Path, config: dict, rank: int, seed: int) -> Path:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for name, (n_out, n_in) in projection_shapes(config).items():
            part = "self_attn" if name in TARGETS[:4] else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{part}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, n_in, generator=generator) / n_in**0.5).bfloat16()
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(n_out, rank, generator=generator) * 0.01).bfloat16()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    adapter_config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(TARGETS)}
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config))
    return folder


def run(llm: LLM, prompts: list[list[int]], adapters: list[str | None], output_len: int) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompts[:8], SamplingParams(max_tokens=4, ignore_eos=True), lora_name=adapters[:8])  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    results = llm.generate(prompts, params, lora_name=adapters)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tokens = sum(len(r.outputs[0].token_ids) for r in results)
    return {"output_tokens": tokens, "seconds": elapsed, "output_tok_s": tokens / elapsed}


def engine(folder: Path, args: argparse.Namespace, **lora) -> LLM:
    return LLM(
        str(folder),
        load_format="dummy",
        dtype="bfloat16",
        max_num_seqs=args.batch,
        enforce_eager=args.enforce_eager,
        show_progress=False,
        **lora,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="r1-distill-qwen-7b", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=64, help="requests, all decoding together")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 8, 32], help="distinct adapters per run")
    parser.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (both engines)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("this benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    config = SHAPES[args.shape]
    work = Path(tempfile.mkdtemp(prefix="seekd-lora-bench-"))
    (work / "model").mkdir()
    (work / "model" / "config.json").write_text(json.dumps(config))
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 30000) for _ in range(args.input_len)] for _ in range(args.batch)]
    most = max(args.adapters)
    names = [f"a{i}" for i in range(most)]
    modules = ",".join(f"{n}={write_adapter(work / n, config, args.rank, i)}" for i, n in enumerate(names))

    rows: dict[str, dict] = {}
    llm = engine(work / "model", args)
    rows["base engine"] = run(llm, prompts, [None] * args.batch, args.output_len)
    del llm
    gc.collect()
    torch.cuda.empty_cache()
    llm = engine(work / "model", args, lora_modules=modules, max_loras=most, max_lora_rank=args.rank)
    rows["lora engine, base requests"] = run(llm, prompts, [None] * args.batch, args.output_len)
    for k in args.adapters:
        rows[f"{k} adapters"] = run(llm, prompts, [names[i % k] for i in range(args.batch)], args.output_len)

    base = rows["base engine"]["output_tok_s"]
    print(f"{'run':<30} {'output tok/s':>13} {'vs base':>9}")
    for name, row in rows.items():
        row["slowdown_vs_base"] = 1 - row["output_tok_s"] / base
        print(f"{name:<30} {row['output_tok_s']:>13.0f} {-100 * row['slowdown_vs_base']:>8.1f}%")
    result = {
        **result_header("lora_decode", torch.cuda.get_device_name()),
        "shape": args.shape,
        "batch": args.batch,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "rank": args.rank,
        "cuda_graphs": not args.enforce_eager,
        "runs": rows,
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"lora_decode_{args.shape}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
