"""GPU kernel time vs wall time of decode steps at a given batch size (torch.profiler), or with
`--prefill` of steps that each prefill one fresh prompt of `--context` tokens (the TTFT step).

If the summed kernel time per step is far under the wall time per step, the GPU waits on the host.

    python benchmarks/profile_decode.py --batch 1 --steps 50
    python benchmarks/profile_decode.py --shape deepseek-v2-lite --prefill --context 1024 --steps 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
from offline_throughput import SHAPES, make_model_folder
from torch.profiler import ProfilerActivity, profile

from seekd import LLM, SamplingParams
from seekd.bench.report import result_header
from seekd.engine.request import EngineCoreRequest


def write_timeline(engine, path: str) -> None:
    """The kernels of one decode step in launch order, with the idle gap before each: where a step's
    time goes between kernels (launch latency inside a CUDA graph, host waits) as well as in them."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.step()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type.name == "CUDA"), key=lambda e: e.time_range.start)
    rows, end = [], None
    for e in kernels:
        start = e.time_range.start
        rows.append(
            {
                "name": e.name[:120],
                "start_us": start,
                "dur_us": e.time_range.elapsed_us(),
                "gap_us": 0.0 if end is None else start - end,
            }
        )
        end = max(end or 0.0, e.time_range.end)
    with open(path, "w") as f:
        json.dump(
            {
                **result_header("profile_decode timeline", torch.cuda.get_device_name()),
                "kernels": rows,
                "span_us": end - kernels[0].time_range.start if kernels else 0.0,
                "busy_us": sum(r["dur_us"] for r in rows),
            },
            f,
            indent=1,
        )


def measure(step: Callable[[], object], steps: int, label: str, rows: int) -> None:
    """Wall time per step, then the summed GPU kernel time per step and the top kernels, each over
    `steps` runs of `step` (already warmed up)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) / steps * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events) / steps
    print(f"{label}: wall {wall_ms:.3f} ms/step, GPU kernels {gpu_us / 1e3:.3f} ms/step")
    print(events.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=60))


def profile_prefill(engine, args: argparse.Namespace) -> int:
    """Each step prefills a new prompt (its own tokens, so no prefix-cache hit) and samples its one
    output token."""
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    count = iter(range(1_000_000))

    def one_prefill() -> None:
        i = next(count)
        prompt = [100 + (i * 131 + j * 7) % 30_000 for j in range(args.context)]
        engine.add_request(EngineCoreRequest(request_id=f"f{i}", prompt_token_ids=prompt, sampling_params=params))
        engine.step()

    for _ in range(3):
        one_prefill()
    measure(one_prefill, args.steps, f"prefill of {args.context} tokens", rows=25)
    if args.timeline:
        engine.add_request(
            EngineCoreRequest(
                request_id="timeline",
                sampling_params=params,
                prompt_token_ids=[7 + j % 20_000 for j in range(args.context)],
            )
        )
        write_timeline(engine, args.timeline)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="r1-distill-qwen-7b", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--prefill", action="store_true", help="profile prefill steps of fresh prompts instead")
    parser.add_argument("--timeline", help="write one step's kernels (name, start and duration in µs) as JSON here")
    args = parser.parse_args()
    llm = LLM(
        str(make_model_folder(args.shape)),
        load_format="dummy",
        dtype="bfloat16",
        device="cuda",
        max_model_len=4096,
        show_progress=False,
    )
    engine = llm.engine
    if args.prefill:
        return profile_prefill(engine, args)
    params = SamplingParams(temperature=0.0, max_tokens=10_000, ignore_eos=True)
    for i in range(args.batch):
        prompt = [1000 + (i * 7 + j) % 5000 for j in range(args.context)]
        engine.add_request(EngineCoreRequest(request_id=f"p{i}", prompt_token_ids=prompt, sampling_params=params))
    while any(r.num_output_tokens == 0 for r in engine.scheduler.requests.values()):
        engine.step()
    for _ in range(10):
        engine.step()
    measure(engine.step, args.steps, f"batch {args.batch}, context {args.context}", rows=15)
    if args.timeline:
        write_timeline(engine, args.timeline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
