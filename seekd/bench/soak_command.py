"""`seekd bench soak` from the command line: which server (started here, or --url), the settings
from the flags, the run with a progress line, then the JSON result, the tables and the exit code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from seekd.bench.client import first_model
from seekd.bench.report import host_info, redact_api_key, result_header, write_json
from seekd.bench.soak import Soak, SoakSettings
from seekd.bench.soak_checks import Tolerances
from seekd.bench.soak_probe import LocalServer, local_server, parent_pid, process_stats, summarize_log
from seekd.bench.soak_report import build_result, summary_tables
from seekd.bench.soak_workload import parse_mix
from seekd.progress import progress_bar

RESULTS_DIR = Path("benchmarks/results")


def settings_from_args(args: argparse.Namespace) -> SoakSettings:
    for name in ("concurrency", "max_tokens", "prompt_tokens", "long_prompt_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.burst < 0:
        raise ValueError("--burst must be >= 0")
    if args.duration <= 0 or args.active <= 0 or args.sample_interval <= 0 or args.window <= 0:
        raise ValueError("--duration, --active, --sample-interval and --window must be > 0")
    warmup = args.warmup if args.warmup is not None else min(300.0, 0.2 * args.duration)
    return SoakSettings(
        duration_s=args.duration,
        concurrency=args.concurrency,
        burst=args.burst,
        active_s=args.active,
        idle_s=args.idle,
        kill_every_s=args.kill_every,
        warmup_s=warmup,
        window_s=args.window,
        sample_interval_s=args.sample_interval,
        max_tokens=args.max_tokens,
        prompt_tokens=args.prompt_tokens,
        long_prompt_tokens=args.long_prompt_tokens,
        mix=parse_mix(args.mix),
        timeout_s=args.timeout,
        idle_timeout_s=args.idle_timeout,
        restart_timeout_s=args.restart_timeout,
        seed=args.seed,
        tolerances=Tolerances(
            rss_rel=args.rss_growth_pct / 100.0,
            rss_abs_mib=args.rss_growth_mib,
            fds=args.fd_growth,
            threads=args.thread_growth,
            kv_idle=args.kv_idle_pct / 100.0,
            max_error_rate=args.max_error_rate,
        ),
    )


def _device() -> str:
    """The client host's accelerator, which is the server's for a server started here."""
    host = host_info()
    if host["gpus"]:
        return host["gpus"][0].split(",")[0].strip()
    return f"CPU: {host['cpu']}, {host['cpu_count']} cores"


def default_tag(args: argparse.Namespace) -> str:
    if args.url:
        name = "url"
    elif args.shape:
        name = args.shape
    elif args.model:
        name = Path(args.model).name
    else:
        name = "demo"
    return f"{name}_{'cuda' if host_info()['gpus'] else 'cpu'}"


def _serve_args(args: argparse.Namespace, work: Path) -> list[str]:
    serve_args = shlex.split(args.serve_args)
    if args.shape:
        from seekd.bench.model_folder import public_shape, write_model_folder

        folder = write_model_folder(work / f"model-{args.shape}", public_shape(args.shape))
        serve_args = ["--model", str(folder), "--load-format", "dummy", *serve_args]
    elif args.model:
        serve_args = ["--model", args.model, *serve_args]
    return serve_args


@contextlib.contextmanager
def _server(args: argparse.Namespace, out: Path, console: Console) -> Iterator[tuple[str, LocalServer | None]]:
    """(base URL, the started server or None for --url)."""
    if args.url:
        yield args.url.rstrip("/"), None
        return
    with tempfile.TemporaryDirectory(prefix="seekd-soak-") as tmp:
        work = Path(tmp)
        log = args.server_log or Path(tempfile.gettempdir()) / f"{out.stem}.server.log"
        serve_args = _serve_args(args, work)
        console.print(f"starting seekd serve {shlex.join(serve_args) or '(the demo model)'}; log: {log}")
        with local_server(serve_args, args.data_dir or work / "data", log, args.startup_timeout) as server:
            yield server.base_url, server


def _api_pid(base_url: str, api_key: str | None, server: LocalServer | None, kills: bool) -> int | None:
    """The API-server process: ours, or for --url the parent of its engine core when that runs on
    this machine. Engine kills need it; without one they are refused up front."""
    if server is not None:
        return server.process.pid
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    engine_pid = httpx.get(f"{base_url}/ready", headers=headers, timeout=10.0).json().get("engine_pid")
    api_pid = parent_pid(engine_pid) if engine_pid and process_stats(engine_pid) is not None else None
    if kills and api_pid is None:
        raise ValueError(
            f"{base_url}/ready names no engine-core process on this machine (engine_pid {engine_pid}); "
            "engine kills need the server to run here (or pass --kill-every 0)"
        )
    return api_pid


def cmd_soak(args: argparse.Namespace, argv: Sequence[str], console: Console) -> int:
    settings = settings_from_args(args)
    out = args.out or RESULTS_DIR / f"soak_{args.tag or default_tag(args)}.json"
    # taken now: the commit that runs, and the date it started (a long run ends hours later)
    header = result_header("soak", _device(), command="seekd " + shlex.join(redact_api_key(argv)))
    with _server(args, out, console) as (base_url, server):
        model = args.served_model or first_model(base_url, args.api_key)
        api_pid = _api_pid(base_url, args.api_key, server, settings.planned_kills > 0)
        soak = Soak(
            settings,
            base_url,
            model,
            args.api_key,
            api_pid,
            (lambda: summarize_log(server.log_path)) if server else None,
        )
        console.print(
            f"soaking {model} at {base_url} for {settings.duration_s / 60:.1f} min: {settings.concurrency} clients, "
            f"bursts of {settings.burst}, {settings.planned_kills} engine kills; result: {out}"
        )
        with progress_bar("soak", round(settings.duration_s)) as advance:
            shown = 0

            def progress(elapsed: float, _: int) -> None:
                nonlocal shown
                step = min(round(elapsed), round(settings.duration_s)) - shown
                if step > 0:
                    advance(step)
                    shown += step

            soak.on_progress = progress
            outcome = asyncio.run(soak.run())
        server_info: dict[str, Any] = {
            "url": base_url,
            "model": model,
            "started": server is not None,
            "command": shlex.join(server.command) if server else None,
            "log": str(server.log_path) if server else None,
        }
    result = build_result(header, settings, {**server_info, "note": args.note}, outcome)
    write_json(out, result)
    for table in summary_tables(result):
        console.print(table)
    verdict = "[green]PASSED[/green]" if outcome.passed else "[red]FAILED[/red]"
    console.print(f"soak {verdict}; result: {out}")
    for check in outcome.checks:
        if not check.passed:
            console.print(f"[red]FAILED {check.name}: {check.detail}[/red]")
    return 0 if outcome.passed else 1
