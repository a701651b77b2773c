"""`seekd bench serve | compare | offline | soak`: argument wiring and the console output of the benchmarks.

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

DATASETS = ("random", "fixed", "chat-like", "shared-prefix", "jsonl")
ENDPOINTS = ("completions", "chat")  # the keys of seekd.bench.client.ENDPOINTS


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"request rates are numbers or inf, comma separated: {text!r}") from None
    if not rates or any(r <= 0 or math.isnan(r) for r in rates):
        raise argparse.ArgumentTypeError(f"request rates must be > 0 (inf: all at once): {text!r}")
    return rates


def duration(text: str) -> float:
    """Seconds from "90", "90s", "20m", "2h", "1h30m" or "1.5h"."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    total, number = 0.0, ""
    try:
        for char in text.strip().lower():
            if char in units:
                total, number = total + float(number) * units[char], ""
            else:
                number += char
        total += float(number) if number else 0.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"a duration is like 90, 90s, 20m, 2h or 1h30m: {text!r}") from None
    if total < 0 or not math.isfinite(total) or not text.strip():
        raise argparse.ArgumentTypeError(f"a duration is like 90, 90s, 20m, 2h or 1h30m: {text!r}")
    return total


def _add_soak_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from seekd.bench.soak_workload import DEFAULT_MIX, KINDS

    p = sub.add_parser(
        "soak",
        help="long mixed workload with engine kills; fails on lost requests, errors or growth",
        description="Runs a mixed workload (bursts, streaming and blocking chat/completions, long prompts, "
        "n>1, structured output, disconnects) against a seekd serve it starts (or --url) for --duration, "
        "SIGKILLs the engine core at random, samples memory, FDs, KV and latency over time, and exits 1 "
        "when a request was lost, errors exceed the bound, the server did not return to idle, or "
        "RSS/FDs/threads grew. Durations take s, m, h (90, 20m, 2h, 1h30m).",
    )
    p.add_argument(
        "--duration", metavar="DUR", type=duration, default=duration("1h"), help="how long to send load (default: 1h)"
    )
    srv = p.add_argument_group("server")
    srv.add_argument(
        "--url", metavar="URL", default=None, help="soak a running server at this root URL (default: start seekd serve)"
    )
    srv.add_argument(
        "--model", metavar="DIR", default=None, help="model folder for the started server (default: the demo model)"
    )
    srv.add_argument(
        "--shape",
        metavar="NAME",
        default=None,
        help="public shape, dummy weights, e.g. r1-distill-qwen-7b (default: none)",
    )
    srv.add_argument(
        "--serve-args", metavar="FLAGS", default="", help='extra `seekd serve` flags, one string (default: "")'
    )
    srv.add_argument(
        "--data-dir",
        metavar="PATH",
        type=Path,
        default=None,
        help="started server's data dir (default: a temporary one)",
    )
    srv.add_argument(
        "--startup-timeout", metavar="DUR", type=duration, default=600.0, help="seconds for it to load (default: 600)"
    )
    srv.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("OPENAI_API_KEY"),
        help="for --url (default: $OPENAI_API_KEY)",
    )
    srv.add_argument(
        "--served-model", metavar="NAME", default=None, help="model name to request (default: the first of /v1/models)"
    )
    w = p.add_argument_group("workload")
    w.add_argument("--concurrency", metavar="N", type=int, default=6, help="clients sending back to back (default: 6)")
    w.add_argument(
        "--burst", metavar="N", type=int, default=16, help="simultaneous requests opening each cycle (default: 16)"
    )
    w.add_argument(
        "--active", metavar="DUR", type=duration, default=50.0, help="seconds of load per cycle (default: 50)"
    )
    w.add_argument(
        "--idle",
        metavar="DUR",
        type=duration,
        default=10.0,
        help="seconds of idle per cycle, incl. settling (default: 10)",
    )
    w.add_argument(
        "--max-tokens", metavar="N", type=int, default=32, help="max_tokens, drawn in [half, this] (default: 32)"
    )
    w.add_argument(
        "--prompt-tokens", metavar="N", type=int, default=64, help="short prompt words, at most (default: 64)"
    )
    w.add_argument(
        "--long-prompt-tokens", metavar="N", type=int, default=3000, help="long prompt words, at most (default: 3000)"
    )
    w.add_argument(
        "--mix", metavar="MIX", default=DEFAULT_MIX, help=f"kind=weight of {', '.join(KINDS)} (default: %(default)s)"
    )
    w.add_argument(
        "--timeout",
        metavar="DUR",
        type=duration,
        default=300.0,
        help="seconds before a request counts as hung (default: 300)",
    )
    w.add_argument("--seed", metavar="N", type=int, default=0, help="seed of the workload and kill times (default: 0)")
    k = p.add_argument_group("engine kills")
    k.add_argument(
        "--kill-every",
        metavar="DUR",
        type=duration,
        default=600.0,
        help="one SIGKILL of the engine core per slot; 0: never (default: 10m)",
    )
    k.add_argument(
        "--restart-timeout",
        metavar="DUR",
        type=duration,
        default=300.0,
        help="seconds a restart may take (default: 300)",
    )
    m = p.add_argument_group("sampling and verdict")
    m.add_argument(
        "--sample-interval",
        metavar="DUR",
        type=duration,
        default=5.0,
        help="seconds between server samples (default: 5)",
    )
    m.add_argument(
        "--window", metavar="DUR", type=duration, default=60.0, help="seconds per latency window (default: 60)"
    )
    m.add_argument(
        "--warmup",
        metavar="DUR",
        type=duration,
        default=None,
        help="growth ignored before (default: 20%% of run, <= 5m)",
    )
    m.add_argument(
        "--idle-timeout",
        metavar="DUR",
        type=duration,
        default=60.0,
        help="seconds to become quiet when idle (default: 60)",
    )
    m.add_argument(
        "--max-error-rate", metavar="X", type=float, default=0.01, help="errors + 429s per request (default: 0.01)"
    )
    m.add_argument(
        "--rss-growth-pct", metavar="X", type=float, default=10.0, help="idle RSS growth allowed, %% (default: 10)"
    )
    m.add_argument("--rss-growth-mib", metavar="X", type=float, default=32.0, help="plus this many MiB (default: 32)")
    m.add_argument("--fd-growth", metavar="N", type=int, default=8, help="idle open-FD growth allowed (default: 8)")
    m.add_argument(
        "--thread-growth", metavar="N", type=int, default=4, help="idle thread-count growth allowed (default: 4)"
    )
    m.add_argument(
        "--kv-idle-pct", metavar="X", type=float, default=0.0, help="KV usage allowed when idle, %% (default: 0)"
    )
    o = p.add_argument_group("output")
    o.add_argument(
        "--out",
        metavar="PATH",
        type=Path,
        default=None,
        help="result JSON (default: benchmarks/results/soak_<tag>.json)",
    )
    o.add_argument(
        "--tag", metavar="TAG", default=None, help="names the result (default: <model>_<cpu|cuda>, e.g. demo_cpu)"
    )
    o.add_argument(
        "--server-log",
        metavar="PATH",
        type=Path,
        default=None,
        help="started server's log (default: <tmp>/<out name>.server.log)",
    )
    o.add_argument("--note", metavar="TEXT", default=None, help="free text kept in the result (default: none)")
    return p


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
        help="random: lengths uniform in len*(1±range-ratio); fixed: exact lengths; chat-like: log-normal "
        "lengths with medians input-len/output-len (a ShareGPT-like mix); shared-prefix: N system prompts x "
        "M questions; jsonl: --dataset-path of {messages|prompt, max_tokens}",
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
    bench = sub.add_parser(
        "bench", help="benchmark a server (serve), compare results, the offline engine, or soak a server"
    )
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    serve = _add_serve_parser(bench_sub)
    compare = bench_sub.add_parser("compare", help="side-by-side table of `bench serve` results")
    compare.add_argument("results", type=Path, nargs="+", help="result JSON files of `seekd bench serve`")
    return [serve, compare, _add_offline_parser(bench_sub), _add_soak_parser(bench_sub)]


def build_requests(args: argparse.Namespace, source: TextSource, seed: int) -> list[BenchRequest]:
    from seekd.bench.workloads import chat_like_requests, jsonl_requests, random_requests, shared_prefix_requests

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
    if args.dataset == "chat-like":
        return chat_like_requests(source, args.num_prompts, args.input_len, args.output_len, seed)
    if args.dataset == "fixed":
        return random_requests(source, args.num_prompts, args.input_len, args.output_len, 0.0, seed)
    return random_requests(
        source, args.num_prompts, args.input_len, args.output_len, args.range_ratio, seed, args.output_range_ratio
    )


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
    from seekd.bench.client import ClientConfig, first_model, run_load
    from seekd.bench.metrics import SLO, summarize
    from seekd.bench.workloads import TextSource
    from seekd.progress import progress_bar
    from seekd.text.tokenizer import Tokenizer

    model = args.model or first_model(args.base_url, args.api_key)
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
    if args.bench_command == "soak":
        from seekd.bench.soak_command import cmd_soak

        return cmd_soak(args, argv, console)
    return cmd_offline(args, argv, console)
