"""`seekd bench serve | compare | offline`: argument wiring and the console output of the benchmarks.

Building the parser imports nothing heavy (every `seekd` command builds it); the benchmark modules,
httpx and numpy load only when a bench command runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from seekd.bench.client import ClientConfig
    from seekd.bench.workloads import BenchRequest, TextSource

DATASETS = ("random", "fixed", "shared-prefix", "jsonl")
ENDPOINTS = ("completions", "chat")  # the keys of seekd.bench.client.ENDPOINTS


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"request rates are numbers or inf, comma separated: {text!r}") from None
    if not rates or any(r <= 0 or math.isnan(r) for r in rates):
        raise argparse.ArgumentTypeError(f"request rates must be > 0 (inf: all at once): {text!r}")
    return rates


def _add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="benchmark a running OpenAI-compatible server (seekd, vLLM, SGLang, Ollama)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root, without /v1")
    p.add_argument("--model", default=None, help="model name to request (default: the first of /v1/models)")
    p.add_argument("--endpoint", choices=ENDPOINTS, default="completions", help="the API the requests go to")
    p.add_argument(
        "--api-key", default=os.environ.get("OPENAI_API_KEY"), help="sent as a Bearer token (default: $OPENAI_API_KEY)"
    )
    w = p.add_argument_group("workload")
    w.add_argument(
        "--dataset",
        choices=DATASETS,
        default="random",
        help="random: lengths uniform in len*(1±range-ratio); fixed: exact lengths; shared-prefix: "
        "N system prompts x M questions; jsonl: --dataset-path of {messages|prompt, max_tokens}",
    )
    w.add_argument("--dataset-path", type=Path, default=None, help="the JSONL file of --dataset jsonl")
    w.add_argument("--num-prompts", type=int, default=200, help="requests per rate (shared-prefix: N x M)")
    w.add_argument("--input-len", type=int, default=256, help="prompt tokens (shared-prefix: question tokens)")
    w.add_argument("--output-len", type=int, default=128, help="max_tokens of each request")
    w.add_argument("--range-ratio", type=float, default=0.5, help="random dataset length spread")
    w.add_argument(
        "--output-range-ratio",
        type=float,
        default=None,
        help="random dataset output length spread (default: --range-ratio)",
    )
    w.add_argument("--prefix-len", type=int, default=512, help="shared-prefix: system prompt tokens")
    w.add_argument("--num-prefixes", type=int, default=4, help="shared-prefix: N system prompts")
    w.add_argument("--questions-per-prefix", type=int, default=16, help="shared-prefix: M questions each")
    w.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="model folder with tokenizer.json: exact prompt token counts, and output tokens "
        "counted when the server sends no usage",
    )
    w.add_argument("--seed", type=int, default=0, help="seeds the prompts and the arrival times")
    w.add_argument("--ignore-eos", action="store_true", help="ask the server to generate exactly max_tokens")
    w.add_argument("--temperature", type=float, default=None, help="sent with every request (default: the server's)")
    w.add_argument("--extra-body", type=json.loads, default={}, help="JSON merged into every request body")
    a = p.add_argument_group("arrival")
    a.add_argument(
        "--request-rate",
        type=_rates,
        default=[math.inf],
        help="Poisson arrival rate(s) in req/s, comma separated for a sweep: 1,2,4,inf (default: inf, all at once)",
    )
    a.add_argument(
        "--max-concurrency",
        type=int,
        default=None,
        help="at most this many in flight; with rate inf, a fixed concurrency (default: no bound)",
    )
    a.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    s = p.add_argument_group("SLO (goodput counts requests meeting all given)")
    s.add_argument("--slo-ttft-ms", type=float, default=None, help="time to first token at most this")
    s.add_argument("--slo-tpot-ms", type=float, default=None, help="time per output token after the first at most this")
    s.add_argument("--slo-e2e-ms", type=float, default=None, help="whole request at most this")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, default=Path("seekd_bench_serve.json"), help="result JSON")
    o.add_argument(
        "--plot", type=Path, default=None, help="latency and throughput plot, PNG (default: --out with .png)"
    )
    o.add_argument("--no-plot", action="store_true", help="write no PNG")
    o.add_argument("--note", default=None, help="free text kept in the result (server version, flags, GPU)")
    o.add_argument("--compare", type=Path, nargs="+", default=None, help="earlier result(s) to compare against")
    return p


def _add_offline_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("offline", help="throughput of the in-process engine (benchmarks/offline_throughput.py)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda if there is a GPU")
    p.add_argument(
        "--shape", default=None, help="public shape with dummy weights (GPU: r1-distill-qwen-7b, ...; CPU: tiny-qwen2)"
    )
    p.add_argument("--model", default=None, help="a model folder instead of a shape (runs in-process)")
    p.add_argument(
        "--num-requests", type=int, default=None, help="requests in the run (default: 256 on GPU, 16 on CPU)"
    )
    p.add_argument(
        "--input-len",
        type=int,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="prompt tokens, uniform in [MIN, MAX] (default: 100 1024 on GPU, 16 64 on CPU)",
    )
    p.add_argument(
        "--output-len",
        type=int,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="output tokens, uniform in [MIN, MAX] (default: as --input-len)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the random prompts and their lengths")
    p.add_argument("--max-num-seqs", type=int, default=256, help="the engine's decode batch")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default: a name from the model and device)")
    return p


def add_bench_parser(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Adds `bench` and returns its commands' parsers."""
    bench = sub.add_parser("bench", help="benchmark a server (serve), compare results, or the offline engine")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    serve = _add_serve_parser(bench_sub)
    compare = bench_sub.add_parser("compare", help="side-by-side table of `bench serve` results")
    compare.add_argument("results", type=Path, nargs="+", help="result JSON files of `seekd bench serve`")
    return [serve, compare, _add_offline_parser(bench_sub)]


def build_requests(args: argparse.Namespace, source: TextSource, seed: int) -> list[BenchRequest]:
    from seekd.bench.workloads import jsonl_requests, random_requests, shared_prefix_requests

    if args.dataset == "jsonl":
        if args.dataset_path is None:
            raise ValueError("--dataset jsonl needs --dataset-path FILE")
        requests = jsonl_requests(args.dataset_path, args.num_prompts, args.output_len)
        if args.endpoint == "completions" and any(r.messages is not None for r in requests):
            raise ValueError(f"{args.dataset_path} holds chat messages; use --endpoint chat")
        return requests
    if args.dataset == "shared-prefix":
        return shared_prefix_requests(
            source, args.num_prefixes, args.questions_per_prefix, args.prefix_len, args.input_len, args.output_len, seed
        )
    if args.dataset == "fixed":
        return random_requests(source, args.num_prompts, args.input_len, args.output_len, 0.0, seed)
    return random_requests(
        source, args.num_prompts, args.input_len, args.output_len, args.range_ratio, seed, args.output_range_ratio
    )


def _first_model(base_url: str, api_key: str | None) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(base_url.rstrip("/") + "/v1/models", headers=headers, timeout=30.0)
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        raise ValueError(f"{base_url}/v1/models lists no model; pass --model")
    return models[0]["id"]


def _settings(args: argparse.Namespace, model: str) -> dict[str, Any]:
    from seekd.bench.metrics import SLO

    return {
        "base_url": args.base_url,
        "model": model,
        "endpoint": args.endpoint,
        "dataset": args.dataset,
        "dataset_path": str(args.dataset_path) if args.dataset_path else None,
        "num_prompts": args.num_prompts,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "range_ratio": args.range_ratio if args.dataset == "random" else 0.0,
        "output_range_ratio": args.output_range_ratio if args.dataset == "random" else 0.0,
        "shared_prefix": {
            "num_prefixes": args.num_prefixes,
            "questions_per_prefix": args.questions_per_prefix,
            "prefix_len": args.prefix_len,
        }
        if args.dataset == "shared-prefix"
        else None,
        "tokenizer": str(args.tokenizer) if args.tokenizer else None,
        "seed": args.seed,
        "ignore_eos": args.ignore_eos,
        "temperature": args.temperature,
        "extra_body": args.extra_body,
        "request_rates": [None if math.isinf(r) else r for r in args.request_rate],
        "max_concurrency": args.max_concurrency,
        "timeout_s": args.timeout,
        "slo": SLO(args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2e_ms).as_dict(),
        "note": args.note,
    }


async def _preflight(config: ClientConfig, request: BenchRequest) -> str | None:
    """One short request first, so a wrong URL, model or key fails in a second with the server's
    own message, not as N identical errors after a long run."""
    import httpx

    from seekd.bench.client import send_request
    from seekd.bench.workloads import BenchRequest

    short = BenchRequest(request.text, 2, system=request.system, messages=request.messages)
    async with httpx.AsyncClient(timeout=config.timeout_s) as client:
        result = await send_request(client, config, short)
    return None if result.ok else f"{result.error}: {result.error_detail}"


def cmd_serve(args: argparse.Namespace, argv: Sequence[str], console: Console) -> int:
    import asyncio

    from seekd.bench import report
    from seekd.bench.client import ClientConfig, run_load
    from seekd.bench.metrics import SLO, summarize
    from seekd.bench.workloads import TextSource
    from seekd.progress import progress_bar
    from seekd.text.tokenizer import Tokenizer

    model = args.model or _first_model(args.base_url, args.api_key)
    tokenizer = Tokenizer(args.tokenizer) if args.tokenizer else None
    source = TextSource(tokenizer)
    config = ClientConfig(
        args.base_url,
        model,
        args.endpoint,
        args.ignore_eos,
        args.temperature,
        args.extra_body,
        args.api_key,
        args.timeout,
    )
    slo = SLO(args.slo_ttft_ms, args.slo_tpot_ms, args.slo_e2e_ms)
    result = report.new_result(argv, _settings(args, model))
    first = build_requests(args, source, args.seed)
    if (problem := asyncio.run(_preflight(config, first[0]))) is not None:
        console.print(f"[red]{config.url} failed a test request ({problem}); nothing was measured[/red]")
        return 1
    for i, rate in enumerate(args.request_rate):
        # fresh prompts per rate, so a prefix cache warmed by one rate does not flatter the next
        requests = first if i == 0 else build_requests(args, source, args.seed + i)
        label = report.rate_label(rate, args.max_concurrency)
        with progress_bar(f"rate {label}", len(requests)) as advance:
            results, duration = asyncio.run(
                run_load(
                    config, requests, rate, args.max_concurrency, args.seed + i, tokenizer, on_done=lambda _: advance(1)
                )
            )
        run = {
            "label": label,
            "request_rate": None if math.isinf(rate) else rate,
            "max_concurrency": args.max_concurrency,
            **summarize(results, duration, slo),
            "load_average_1m": report.load_average(),
        }
        result["runs"].append(run)
        report.write_json(args.out, result)  # after every rate: a sweep cut short keeps what it measured
        if run["failed"]:
            console.print(
                f"[yellow]rate {label}: {run['failed']} of {run['num_requests']} failed: {run['errors']}[/yellow]"
            )
    console.print(report.summary_table(result))
    console.print(f"result: {args.out}")
    if not args.no_plot:
        plot_path = args.plot or args.out.with_suffix(".png")
        if report.plot(result, plot_path):
            console.print(f"plot: {plot_path}")
        else:
            console.print("[yellow]matplotlib is not installed: no plot (pip install -e '.[bench]')[/yellow]")
    if args.compare:
        others = [report.load_json(p) for p in args.compare]
        console.print(report.compare_table([*others, result], [*(p.name for p in args.compare), args.out.name]))
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from seekd.bench import report

    results = [report.load_json(p) for p in args.results]
    names = [p.name for p in args.results]
    if len(set(names)) < len(names):
        names = [str(p) for p in args.results]
    console.print(report.compare_table(results, names))
    return 0


def cmd_offline(args: argparse.Namespace, argv: Sequence[str], console: Console) -> int:
    from seekd.bench import offline, report

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    if gpu and args.model is None and args.shape not in offline.TINY_SHAPES:
        forwarded = [
            "--shape",
            args.shape or "r1-distill-qwen-7b",
            "--seed",
            str(args.seed),
            "--max-num-seqs",
            str(args.max_num_seqs),
        ]
        if args.num_requests is not None:
            forwarded += ["--num-requests", str(args.num_requests)]
        for flag, value in (("--input-len", args.input_len), ("--output-len", args.output_len)):
            if value is not None:
                forwarded += [flag, *map(str, value)]
        if args.out is not None:
            forwarded += ["--out", str(args.out)]
        return offline.run_script(forwarded)
    default_len = (100, 1024) if gpu else (16, 64)
    result = offline.run_in_process(
        model=args.model,
        shape=args.shape or "tiny-qwen2",
        device=device,
        num_requests=args.num_requests or (256 if gpu else 16),
        input_len=tuple(args.input_len or default_len),
        output_len=tuple(args.output_len or default_len),
        seed=args.seed,
        max_num_seqs=args.max_num_seqs,
        argv=argv,
    )
    out = args.out or Path(f"seekd_bench_offline_{Path(result['model']).name}_{device}.json")
    report.write_json(out, result)
    console.print(
        f"{result['model']} on {device}: {result['output_tok_s']:.1f} output tok/s, "
        f"{result['total_tok_s']:.1f} total tok/s ({result['num_requests']} requests, "
        f"{result['elapsed_s']:.2f} s)"
    )
    console.print(f"result: {out}")
    return 0


def run_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Entry point from `seekd bench ...`; `argv` is recorded in results as the exact command."""
    import httpx
    from rich.console import Console

    console = Console()
    if args.bench_command == "serve":
        try:
            return cmd_serve(args, argv, console)
        except httpx.HTTPError as e:
            console.print(f"[red]cannot query {args.base_url}: {e}[/red]")
            return 1
    if args.bench_command == "compare":
        return cmd_compare(args, console)
    return cmd_offline(args, argv, console)
