"""Online serving on the GPU: `seekd serve` under request-rate sweeps, against the seeds' SLOs, beside
the same workload run offline through `seekd.LLM`.

One run, one device:
1. `seekd serve` on dummy weights of a public shape (default: R1-Distill-Qwen-7B) with DeepSeek's
   real tokenizer (seekd/bench/model_folder.py), streaming `/v1/completions` with `ignore_eos`.
2. Saturation: the chat-like workload (log-normal lengths, seekd/bench/workloads.py) all at once
   under a concurrency bound: output tok/s online.
3. A Poisson request-rate sweep of the same workload (fresh prompts per rate): TTFT/TPOT/ITL/E2E
   p50/p99, goodput at TTFT p99 <= 500 ms and TPOT p99 <= 50 ms, and the highest swept rate that
   holds both at p99.
4. Long prompts (4096 in / 256 out by default) at a few rates.
5. The server stopped, the saturation workload's exact token ids through `seekd.LLM` in this
   process: offline output tok/s, and the online/offline ratio.

    python benchmarks/online_gpu.py --out benchmarks/results/online_r1-distill-qwen-7b_h100.json

`seekd bench serve --dataset chat-like` runs the same workload against any server (the CPU regression
sweep on the demo model uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from seekd.bench.client import ClientConfig, run_load
from seekd.bench.metrics import SLO, summarize
from seekd.bench.model_folder import public_shape, write_model_folder
from seekd.bench.report import host_info, result_header, write_json
from seekd.bench.soak_probe import local_server
from seekd.bench.workloads import BenchRequest, TextSource, chat_like_requests, random_requests
from seekd.models.demo import ensure_demo_model
from seekd.text.tokenizer import Tokenizer


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _run(
    config: ClientConfig, requests: list[BenchRequest], rate: float, concurrency: int | None, slo: SLO, seed: int
) -> dict[str, Any]:
    results, duration = asyncio.run(run_load(config, requests, rate, concurrency, seed))
    return {
        "request_rate": None if math.isinf(rate) else rate,
        "max_concurrency": concurrency,
        **summarize(results, duration, slo),
    }


def _holds(run: dict[str, Any], slo: SLO) -> bool:
    """p99 TTFT and TPOT within the SLO, and nothing failed."""
    ttft, tpot = run["ttft_ms"]["p99"], run["tpot_ms"]["p99"]
    return run["failed"] == 0 and ttft is not None and ttft <= slo.ttft_ms and (tpot is None or tpot <= slo.tpot_ms)


def offline_tok_s(
    folder: Path, requests: list[BenchRequest], tokenizer: Tokenizer, max_num_seqs: int
) -> dict[str, Any]:
    """The same prompts (as the server tokenized them) and output lengths through seekd.LLM."""
    from seekd import LLM, SamplingParams

    llm = LLM(str(folder), load_format="dummy", max_num_seqs=max_num_seqs, show_progress=False)
    prompts = [tokenizer.encode(r.prompt) for r in requests]
    params = [SamplingParams(temperature=0.0, max_tokens=r.max_tokens, ignore_eos=True) for r in requests]
    llm.generate(prompts[:4], params[:4])  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"elapsed_s": elapsed, "output_tokens": tokens, "output_tok_s": tokens / elapsed}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="r1-distill-qwen-7b", help="public shape (dummy weights)")
    parser.add_argument("--demo", action="store_true", help="the built-in demo model instead of --shape (CPU check)")
    parser.add_argument("--num-prompts", type=int, default=400, help="requests of the saturation run and each rate")
    parser.add_argument("--input-median", type=int, default=256, help="chat-like prompt length median (tokens)")
    parser.add_argument("--output-median", type=int, default=192, help="chat-like output length median (tokens)")
    parser.add_argument("--concurrency", type=int, default=256, help="in flight during the saturation run")
    parser.add_argument("--rates", default="4,8,16,24,32,48,64", help="Poisson request rates of the sweep (req/s)")
    parser.add_argument("--long-rates", default="1,2,4", help="request rates of the 4096-in / 256-out runs")
    parser.add_argument("--long-prompts", type=int, default=64, help="requests per long-prompt rate")
    parser.add_argument("--long-input", type=int, default=4096, help="prompt tokens of the long-prompt runs")
    parser.add_argument("--long-output", type=int, default=256, help="output tokens of the long-prompt runs")
    parser.add_argument("--slo-ttft-ms", type=float, default=500.0, help="TTFT target (p99)")
    parser.add_argument("--slo-tpot-ms", type=float, default=50.0, help="TPOT target (p99)")
    parser.add_argument("--serve-args", default="", help="extra `seekd serve` flags, one string")
    parser.add_argument("--skip-offline", action="store_true", help="do not run the offline comparison")
    parser.add_argument("--seed", type=int, default=0, help="seeds prompts, lengths and arrivals")
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    args = parser.parse_args(argv)

    slo = SLO(args.slo_ttft_ms, args.slo_tpot_ms)
    work = Path(tempfile.mkdtemp(prefix="seekd-online-"))
    if args.demo:
        folder = ensure_demo_model(work / "demo")
    else:
        folder = write_model_folder(work / "model", public_shape(args.shape))
    tokenizer = Tokenizer(str(folder))
    source = TextSource(tokenizer)
    saturation = chat_like_requests(source, args.num_prompts, args.input_median, args.output_median, args.seed)
    max_num_seqs = args.concurrency
    serve_args = ["--model", str(folder), "--load-format", "dummy", "--max-num-seqs", str(max_num_seqs)]
    serve_args += shlex.split(args.serve_args)
    result: dict[str, Any] = {
        **result_header("online_gpu", _device(), command="python " + shlex.join(["benchmarks/online_gpu.py", *argv])),
        "host": host_info(),
        "shape": "demo" if args.demo else args.shape,
        "serve_args": serve_args[4:],
        "workload": {
            "kind": "chat-like (log-normal lengths)",
            "num_prompts": args.num_prompts,
            "input_median": args.input_median,
            "output_median": args.output_median,
            "prompt_tokens": sum(r.prompt_len or 0 for r in saturation),
            "output_tokens": sum(r.max_tokens or 0 for r in saturation),
        },
        "slo": slo.as_dict(),
    }
    with local_server(serve_args, work / "data", work / "serve.log", startup_timeout_s=900) as server:
        model = asyncio.run(_model_name(server.base_url))
        config = ClientConfig(server.base_url, model, "completions", ignore_eos=True, temperature=0.0)
        warm_up = chat_like_requests(source, 16, 64, 16, args.seed + 1000)
        asyncio.run(run_load(config, warm_up, math.inf, 16, args.seed))  # first-call compiles and graphs
        result["saturation"] = _run(config, saturation, math.inf, args.concurrency, slo, args.seed)
        write_json(args.out, result)
        sweep = []
        for i, rate in enumerate(float(r) for r in args.rates.split(",")):
            requests = chat_like_requests(
                source, args.num_prompts, args.input_median, args.output_median, args.seed + i + 1
            )
            sweep.append(_run(config, requests, rate, None, slo, args.seed + i + 1))
            result["sweep"] = sweep
            write_json(args.out, result)
            print(_line(f"rate {rate:g}", sweep[-1]), flush=True)
        held = [run["request_rate"] for run in sweep if _holds(run, slo)]
        result["slo_max_rate"] = max(held) if held else None
        long_runs = []
        for i, rate in enumerate(float(r) for r in args.long_rates.split(",")):
            seed = args.seed + 100 + i
            requests = random_requests(source, args.long_prompts, args.long_input, args.long_output, 0.0, seed)
            long_runs.append(_run(config, requests, rate, None, slo, seed))
            result["long_prompts"] = long_runs
            write_json(args.out, result)
            print(_line(f"{args.long_input}/{args.long_output} rate {rate:g}", long_runs[-1]), flush=True)
    if not args.skip_offline:
        offline = offline_tok_s(folder, saturation, tokenizer, max_num_seqs)
        result["offline"] = offline
        result["online_over_offline"] = result["saturation"]["output_throughput"] / offline["output_tok_s"]
    write_json(args.out, result)
    print(_line("saturation", result["saturation"]))
    if "offline" in result:
        ratio = result["online_over_offline"]
        print(f"offline {result['offline']['output_tok_s']:.0f} output tok/s; online/offline {ratio:.3f}")
    held = f"TTFT p99 <= {slo.ttft_ms:g} ms and TPOT p99 <= {slo.tpot_ms:g} ms"
    print(f"highest rate holding {held}: {result['slo_max_rate']}")
    print(f"result: {args.out}")
    return 0


async def _model_name(base_url: str) -> str:
    import httpx

    async with httpx.AsyncClient() as client:
        return (await client.get(base_url + "/v1/models")).json()["data"][0]["id"]


def _line(label: str, run: dict[str, Any]) -> str:
    return (
        f"{label}: {run['output_throughput']:.0f} output tok/s, TTFT p50/p99 {run['ttft_ms']['p50']:.0f}/"
        f"{run['ttft_ms']['p99']:.0f} ms, TPOT p50/p99 {run['tpot_ms']['p50']:.1f}/{run['tpot_ms']['p99']:.1f} ms, "
        f"goodput {run['goodput']:.2f} req/s, failed {run['failed']}"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
