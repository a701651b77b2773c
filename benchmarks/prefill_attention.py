"""Prefill attention of fresh prompts: seekd's Triton paged kernel against torch's FlashAttention
varlen kernel (`--prefill-attention varlen`), on the same cache, for the R1-Distill-Qwen-7B head
shape in bf16. Median of CUDA-event timings per case; the varlen time includes reading this step's
keys and values back from their cache slots, as the engine's varlen path does.

    python benchmarks/prefill_attention.py --out benchmarks/results/prefill_attention_h100.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from seekd.bench.report import result_header
from seekd.layers.attention import Attention, TritonAttentionBackend
from seekd.layers.forward_context import AttentionMetadata, CacheGroupMetadata

# (prompt lengths of one step) — single long prompts set TTFT; batches of prompts set prefill throughput
CASES = ([1024], [4096], [8192], [512] * 16, [1024] * 8, [100, 700, 1500, 3000, 250, 900])


def fresh_prompts(lengths: list[int], block_size: int, device: str) -> tuple[AttentionMetadata, int]:
    """Metadata of one step prefilling `lengths` new prompts into consecutive blocks."""
    tables, slots, next_block = [], [], 1  # block 0 is the null block
    max_blocks = max(-(-n // block_size) for n in lengths)
    for n in lengths:
        blocks = torch.arange(next_block, next_block + -(-n // block_size))
        next_block += len(blocks)
        tables.append(torch.cat([blocks, torch.zeros(max_blocks - len(blocks), dtype=torch.long)]))
        pos = torch.arange(n)
        slots.append(blocks[pos // block_size] * block_size + pos % block_size)
    starts = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    starts[1:] = torch.tensor(lengths).cumsum(0)
    meta = AttentionMetadata(
        query_start_loc=starts.to(device),
        seq_lens=torch.tensor(lengths, dtype=torch.int32, device=device),
        max_query_len=max(lengths),
        max_seq_len=max(lengths),
        query_lens_cpu=list(lengths),
        seq_lens_cpu=list(lengths),
        groups={
            "kv": CacheGroupMetadata(
                torch.stack(tables).to(torch.int32).to(device), torch.cat(slots).to(device), block_size
            )
        },
    )
    return meta, next_block


def time_ms(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=28)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prefill_attention.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    layer = Attention(args.heads, args.head_dim, args.head_dim**-0.5, args.kv_heads)
    rows = []
    for lengths in CASES:
        meta, blocks = fresh_prompts(lengths, args.block_size, "cuda")
        layer.kv_cache = torch.randn(
            blocks, args.block_size, 2, args.kv_heads, args.head_dim, device="cuda", dtype=torch.bfloat16
        )
        q = torch.randn(sum(lengths), args.heads, args.head_dim, device="cuda", dtype=torch.bfloat16)
        row = {"prompt_lens": lengths, "tokens": sum(lengths)}
        outs = {}
        for kind in ("triton", "varlen"):
            backend = TritonAttentionBackend(args.kv_heads, prefill=kind)
            meta.backend_data = backend.prepare(meta)
            outs[kind] = backend.attend(layer, q, meta)
            row[f"{kind}_ms"] = time_ms(lambda b=backend, q=q, m=meta: b.attend(layer, q, m), args.reps)
        row["max_abs_diff"] = (outs["triton"].float() - outs["varlen"].float()).abs().max().item()
        row["varlen_speedup"] = row["triton_ms"] / row["varlen_ms"]
        rows.append(row)
        print(
            f"{str(lengths)[:40]:<42} triton {row['triton_ms']:8.3f} ms  varlen {row['varlen_ms']:8.3f} ms  "
            f"x{row['varlen_speedup']:.2f}",
            flush=True,
        )
    result = {
        **result_header("prefill_attention", torch.cuda.get_device_name()),
        "torch": torch.__version__,
        "shape": {"heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim, "dtype": "bfloat16"},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
