"""Runs a parallel seekd.LLM (tensor x pipeline ranks, experts sliced or whole) in its own process
for the parallel tests, so that a hung collective is bounded by the test's subprocess timeout and the
process group never lives in the pytest process. Prints one JSON line on stdout."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from seekd import LLM, SamplingParams

PROMPT_ROUNDS = [
    # mixed lengths; the 70-token prompt spans three chunks of 32; the last shares a 38-token prefix
    [[*list(range(2, 40)), 5, 6], [7, 8, 9], list(range(50, 120)), [11] * 17],
    # the same prefixes again: prefix-cache hits
    [[*list(range(2, 40)), 12], list(range(50, 100)), [13, 14]],
]


def build(args: dict) -> LLM:
    return LLM(
        args["model"],
        tensor_parallel_size=args["tp"],
        pipeline_parallel_size=args.get("pp", 1),
        enable_expert_parallel=args.get("ep", False),
        expert_dispatch=args.get("dispatch", "auto"),
        dtype="float32",
        num_kv_blocks=args.get("num_kv_blocks", 64),
        max_num_batched_tokens=32,
        async_scheduling=args.get("async_scheduling", "off"),
        load_format=args.get("load_format", "auto"),
        kv_cache_dtype=args.get("kv_cache_dtype", "auto"),
        device=args.get("device", "cpu"),
        show_progress=False,
    )


def generate(llm: LLM) -> dict:
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    tokens, cached = [], []
    for prompts in PROMPT_ROUNDS:
        outs = llm.generate(prompts, params)
        tokens.append([o.outputs[0].token_ids for o in outs])
        cached.append([o.num_cached_tokens for o in outs])
    stats = llm.engine.stats()
    return {
        "tokens": tokens,
        "cached": cached,
        "preemptions": llm.engine.scheduler.num_preemptions,
        "expert_tokens": sum(v for k, v in stats.items() if k.startswith("expert_tokens:")),
    }


def main() -> None:
    args = json.loads(sys.argv[1])
    llm = build(args)
    mode = args.get("mode", "generate")
    if mode == "generate":
        print(json.dumps(generate(llm)), flush=True)
    elif mode == "kill_worker":  # killed mid-generation: rank 0 is inside a step, often in a collective
        worker = llm.engine.tp_driver.worker_pids[args.get("kill_rank", 1) - 1]
        threading.Timer(0.3, os.kill, (worker, signal.SIGKILL)).start()
        error, deadline = None, time.monotonic() + 30
        while error is None and time.monotonic() < deadline:
            try:
                llm.generate([[5] * 10] * 4, SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True))
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
        print(json.dumps({"worker": worker, "error": error}), flush=True)
    elif mode == "wait":  # the test kills this process (rank 0) and watches the worker
        print(json.dumps({"worker": llm.engine.tp_driver.worker_pids[0]}), flush=True)
        time.sleep(120)


if __name__ == "__main__":
    main()
