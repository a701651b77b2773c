"""Host time of one decode step with N running sequences: schedule + input preparation + sampling
batch + update, without the model (which runs on the device, overlapping nothing of this).

    python benchmarks/host_overhead.py --num-seqs 256 --context 1000
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from seekd.bench.report import result_header
from seekd.config import CacheConfig, SchedulerConfig
from seekd.engine.model_runner import ModelRunner
from seekd.engine.request import Request
from seekd.engine.sampler import SamplingBatch
from seekd.engine.scheduler import Scheduler
from seekd.layers.attention import Attention
from seekd.sampling_params import SamplingParams


class OneAttentionLayer(torch.nn.Module):
    """The runner lays out its KV cache from the model's attention layers: one standard layer gives
    the single cache group of a dense model (R1-Distill-Qwen-7B's heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention(28, 128, 128**-0.5, 4)

    def attention_layers(self) -> list[Attention]:
        return [self.attn]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--context", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "host_overhead_cpu.json"))
    args = parser.parse_args()

    block_size = 16
    max_output = 4 * args.steps + 256  # nobody finishes while prefills and timed steps run
    max_len = args.context + max_output + 1
    blocks = args.num_seqs * (-(-max_len // block_size)) + 1
    sched = Scheduler(
        SchedulerConfig(max_num_seqs=args.num_seqs, max_num_batched_tokens=8192),
        CacheConfig(block_size=block_size),
        blocks,
        max_len,
    )
    runner = ModelRunner(OneAttentionLayer(), "cpu", torch.bfloat16, block_size, 152064)
    params = SamplingParams(temperature=0.0, max_tokens=max_output, ignore_eos=True)
    for i in range(args.num_seqs):
        prompt = [(i * 31 + j) % 150000 for j in range(args.context)]
        sched.add_request(Request(f"r{i}", prompt, params, max_output_tokens=max_output))
    while any(r.num_output_tokens == 0 for r in sched.requests.values()):  # prefill, untimed
        plan = sched.schedule()
        done = {
            r.request_id: 1
            for r in plan.requests
            if r.num_computed_tokens + plan.num_scheduled_tokens[r.request_id] == r.num_tokens
        }
        sched.update(plan, done)

    parts: dict[str, list[float]] = {"schedule": [], "prepare_inputs": [], "sampling_batch": [], "update": []}
    for step in range(args.steps):
        t0 = time.perf_counter()
        plan = sched.schedule()
        t1 = time.perf_counter()
        flat, sampling_requests, _ = runner.flatten(plan)
        runner.device_inputs(flat)
        t2 = time.perf_counter()
        SamplingBatch.from_requests(sampling_requests, 152064, torch.device("cpu"))
        t3 = time.perf_counter()
        sched.update(plan, {r.request_id: 7 + step for r in plan.requests})
        t4 = time.perf_counter()
        assert len(plan.requests) == args.num_seqs
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[name].append(dt * 1e3)
    medians = {f"{k}_ms": statistics.median(v) for k, v in parts.items()}
    totals = [sum(v[i] for v in parts.values()) for i in range(args.steps)]
    result = {
        **result_header(
            "host_overhead", f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        ),
        "num_seqs": args.num_seqs,
        "context": args.context,
        **medians,
        "total_ms_p50": statistics.median(totals),
        "total_ms_p99": sorted(totals)[int(0.99 * (len(totals) - 1))],
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
