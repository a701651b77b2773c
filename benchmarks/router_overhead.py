"""What `seekd router` costs and gives: added latency per request and per streamed token, throughput
of three replicas behind it against one, and the response cache's speedup on repeated questions.

Everything runs as real processes on loopback. The overhead rows put the router in front of a fake
OpenAI-compatible upstream (this script in `--fake-upstream` mode) that answers at once, so the
difference between going through the router and going to the upstream directly is the router's
own time: requests alternate between the two paths and the added latency is taken per pair. The
throughput and cache rows use real `seekd serve` replicas of the demo model (random weights, CPU).
On a 2-core machine three CPU replicas share the same cores, so "3 vs 1" there measures the
router's balancing rather than added compute; on GPUs each replica brings its own device.

    python benchmarks/router_overhead.py [--requests 400] [--stream-tokens 256]
        [--out benchmarks/results/router_overhead_cpu.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from seekd.bench.report import result_header

FAKE_MODEL = "fake"
DEMO_MODEL = "seekd-demo-random"


def fake_upstream(port: int) -> None:
    """An OpenAI-compatible server that answers at once: a fixed message, or `max_tokens` SSE chunks."""
    import uvicorn

    app = FastAPI()

    @app.get("/ready")
    async def ready() -> dict:
        return {"status": "ready"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        if not body.get("stream"):
            message = {"role": "assistant", "content": "four"}
            return {"object": "chat.completion", "model": FAKE_MODEL, "choices": [{"index": 0, "message": message}]}

        async def events():
            for i in range(body.get("max_tokens") or 1):
                chunk = {"model": FAKE_MODEL, "choices": [{"index": 0, "delta": {"content": f" t{i}"}}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process(cmd: list[str], ready_url: str, log: Path, timeout: float = 120.0) -> Iterator[subprocess.Popen]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[:4]} exited; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=1.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:4]} not ready after {timeout} s; see {log}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def router(folder: Path, backends: list[tuple[str, str]], model: str, **sections) -> Iterator[str]:
    port = free_port()
    config = {
        "listen": {"port": port, "log_level": "warning"},
        "backends": [{"name": name, "url": url, "models": [model]} for name, url in backends],
        **sections,
    }
    path = folder / f"router-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "seekd.cli", "router", "--config", str(path)]
    url = f"http://127.0.0.1:{port}"
    with process(cmd, f"{url}/ready", folder / f"router-{port}.log"):
        time.sleep(0.5)  # first health probes
        yield url


@contextlib.contextmanager
def serve(folder: Path, data_dir: Path, name: str) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "seekd.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    cmd += ["--num-kv-blocks", "1536", "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    with process(cmd, f"{url}/ready", folder / f"{name}.log"):
        yield url


def chat_body(model: str, content: str, max_tokens: int, stream: bool = False) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
    return {**body, "temperature": 0, "stream": stream}


def timed(client: httpx.Client, url: str, body: dict) -> float:
    start = time.perf_counter()
    if body.get("stream"):
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            for _ in r.iter_bytes():
                pass
    else:
        r = client.post(f"{url}/v1/chat/completions", json=body)
    assert r.status_code == 200, r.status_code
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def overhead_rows(direct: str, routed: str, requests: int, stream_tokens: int) -> dict:
    with httpx.Client(timeout=60) as client:
        body = chat_body(FAKE_MODEL, "what is 2+2?", 1)
        for _ in range(50):
            timed(client, direct, body), timed(client, routed, body)
        pairs = [(timed(client, direct, body), timed(client, routed, body)) for _ in range(requests)]
        added = [r - d for d, r in pairs]
        stream = chat_body(FAKE_MODEL, "count", stream_tokens, stream=True)
        streams = [
            (timed(client, direct, stream), timed(client, routed, stream)) for _ in range(max(10, requests // 20))
        ]
    direct_s = statistics.median(d for d, _ in streams)
    routed_s = statistics.median(r for _, r in streams)
    return {
        "requests": requests,
        "direct_p50_ms": 1e3 * percentile([d for d, _ in pairs], 0.5),
        "routed_p50_ms": 1e3 * percentile([r for _, r in pairs], 0.5),
        "added_p50_ms": 1e3 * percentile(added, 0.5),
        "added_p99_ms": 1e3 * percentile(added, 0.99),
        "stream_tokens": stream_tokens,
        "stream_direct_ms": 1e3 * direct_s,
        "stream_routed_ms": 1e3 * routed_s,
        "added_per_token_us": 1e6 * (routed_s - direct_s) / stream_tokens,
    }


async def throughput(url: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    queue = list(range(requests))
    tokens = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while queue:
            i = queue.pop()
            body = {**chat_body(DEMO_MODEL, f"question {i}", max_tokens), "ignore_eos": True}
            r = await client.post(f"{url}/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            tokens += r.json()["usage"]["completion_tokens"]

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=300) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"requests": requests, "concurrency": concurrency, "seconds": elapsed, "output_tok_per_s": tokens / elapsed}


def repeated_questions(url: str, questions: int, repeats: int, max_tokens: int) -> dict:
    asks = [q for q in range(questions) for _ in range(repeats)]
    random.Random(0).shuffle(asks)
    hits = 0
    latencies = []
    with httpx.Client(timeout=120) as client:
        for q in asks:
            start = time.perf_counter()
            r = client.post(
                f"{url}/v1/chat/completions", json=chat_body(DEMO_MODEL, f"repeated question {q}", max_tokens)
            )
            latencies.append(time.perf_counter() - start)
            hits += "x-seekd-cache" in r.headers
    return {"requests": len(asks), "hit_rate": hits / len(asks), "mean_ms": 1e3 * statistics.mean(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="request pairs for the added-latency rows")
    parser.add_argument("--stream-tokens", type=int, default=256, help="tokens per stream for the per-token row")
    parser.add_argument("--out", default="benchmarks/results/router_overhead_cpu.json", help="result JSON path")
    parser.add_argument("--fake-upstream", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_upstream is not None:
        return fake_upstream(args.fake_upstream)

    with tempfile.TemporaryDirectory() as tmp:
        folder, data_dir = Path(tmp), Path(tmp) / "data"
        port = free_port()
        fake_cmd = [sys.executable, __file__, "--fake-upstream", str(port)]
        fake_url = f"http://127.0.0.1:{port}"
        with (
            process(fake_cmd, f"{fake_url}/ready", folder / "fake.log"),
            router(folder, [("fake", fake_url)], FAKE_MODEL) as routed,
        ):
            overhead = overhead_rows(fake_url, routed, args.requests, args.stream_tokens)
        print(
            f"added latency p50 {overhead['added_p50_ms']:.2f} ms, p99 {overhead['added_p99_ms']:.2f} ms; "
            f"per streamed token {overhead['added_per_token_us']:.1f} µs"
        )

        with contextlib.ExitStack() as stack:
            replicas = [(name, stack.enter_context(serve(folder, data_dir, name))) for name in ("r0", "r1", "r2")]
            for _, url in replicas:  # first requests of a replica pay its warm-up, not the router's
                asyncio.run(throughput(url, 4, 2, 8))
            one = stack.enter_context(router(folder, replicas[:1], DEMO_MODEL))
            three = stack.enter_context(router(folder, replicas, DEMO_MODEL))
            cached = stack.enter_context(router(folder, replicas[:1], DEMO_MODEL, cache={"enabled": True}))
            scale = {
                "one_replica": asyncio.run(throughput(one, 36, 6, 32)),
                "three_replicas": asyncio.run(throughput(three, 36, 6, 32)),
            }
            cache = {
                "cache_off": repeated_questions(one, 10, 5, 32),
                "cache_on": repeated_questions(cached, 10, 5, 32),
            }
        scale["speedup"] = scale["three_replicas"]["output_tok_per_s"] / scale["one_replica"]["output_tok_per_s"]
        cache["speedup"] = cache["cache_off"]["mean_ms"] / cache["cache_on"]["mean_ms"]
        print(
            f"3 replicas vs 1: {scale['speedup']:.2f}x output tokens/s; cache on repeated questions: "
            f"{cache['speedup']:.1f}x faster mean latency, hit rate {cache['cache_on']['hit_rate']:.0%}"
        )

    result = {
        **result_header("router_overhead", f"cpu ({os.cpu_count()} cores), Python {sys.version.split()[0]}"),
        "what": "seekd router on loopback: added latency against a zero-work upstream (pairs alternate direct and "
        "routed), per streamed token, demo-model replicas 3 vs 1 behind the router (6 concurrent clients, 32 "
        "tokens each), and a repeated-question workload (10 questions x 5, temperature 0) with the cache off "
        "and on (memory level). The machine's cores are shared by client, router and replicas.",
        "overhead": overhead,
        "replicas": scale,
        "cache": cache,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
