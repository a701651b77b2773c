"""Host cost of driving a tensor-parallel worker: rank 0 encodes a step (seekd.engine.executor.tp_workers) and
writes it to the worker's pipe; the worker reads and decodes it into the FlatStep it runs.

Measured with a real worker process that acknowledges each decoded step with one byte:
- send: rank 0's encode + pipe write per worker (paid once per worker, on rank 0's step path);
- round trip: send until the worker holds the decoded step (the latency a worker adds before it can
  start the forward, which it otherwise spends waiting in its first collective anyway).

    python benchmarks/tp_step_ipc.py [--steps 300] [--out benchmarks/results/tp_step_ipc_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import msgspec
import numpy as np

from seekd.bench.report import result_header
from seekd.engine.executor.tp_workers import StepMessage, decode_step, encode_step
from seekd.engine.flat_step import FlatStep

BLOCK = 16
# (name, sequences, context tokens each, new tokens each)
SHAPES = [
    ("decode b1 ctx1k", 1, 1024, 1),
    ("decode b64 ctx1k", 64, 1024, 1),
    ("decode b256 ctx1k", 256, 1024, 1),
    ("decode b256 ctx8k", 256, 8192, 1),
    ("prefill 1x8192", 1, 8192, 8192),
]


def make_step(num_seqs: int, context: int, new: int) -> FlatStep:
    blocks = -(-context // BLOCK)
    tokens = num_seqs * new
    rng = np.random.default_rng(0)
    return FlatStep(
        input_ids=rng.integers(0, 150_000, tokens, dtype=np.int64),
        positions=np.tile(np.arange(context - new, context, dtype=np.int64), num_seqs),
        query_lens=[new] * num_seqs,
        seq_lens=[context] * num_seqs,
        block_tables=[rng.integers(1, 10**6, (num_seqs, blocks), dtype=np.int32)],
        slot_mapping=[rng.integers(0, 10**7, tokens, dtype=np.int64)],
        logits_indices=np.arange(new - 1, tokens, new, dtype=np.int64),
        pending=np.zeros((0, 2), dtype=np.int64),
    )


def child(read_fd: int, ack_fd: int) -> None:
    conn = Connection(read_fd, writable=False)
    ack = Connection(ack_fd, readable=False)
    decoder = msgspec.msgpack.Decoder(StepMessage)
    while True:
        try:
            frame = conn.recv_bytes()
        except EOFError:
            return
        decode_step(decoder.decode(frame))
        ack.send_bytes(b"k")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="benchmarks/results/tp_step_ipc_cpu.json")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    step_r, step_w = os.pipe()
    ack_r, ack_w = os.pipe()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(step_r), str(ack_w)], pass_fds=(step_r, ack_w))
    os.close(step_r)
    os.close(ack_w)
    send, ack = Connection(step_w, readable=False), Connection(ack_r, writable=False)
    encoder = msgspec.msgpack.Encoder()
    rows = []
    for name, num_seqs, context, new in SHAPES:
        step = make_step(num_seqs, context, new)
        sends, trips = [], []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            frame = encoder.encode(encode_step(step))
            send.send_bytes(frame)
            t1 = time.perf_counter()
            ack.recv_bytes()
            t2 = time.perf_counter()
            sends.append((t1 - t0) * 1e6)
            trips.append((t2 - t0) * 1e6)
        rows.append(
            {
                "shape": name,
                "frame_bytes": len(frame),
                "send_us_p50": statistics.median(sends),
                "round_trip_us_p50": statistics.median(trips),
                "round_trip_us_p99": sorted(trips)[int(0.99 * (len(trips) - 1))],
            }
        )
        print(
            f"{name:20s} {len(frame):>9d} B  send {rows[-1]['send_us_p50']:8.1f} us  "
            f"round trip {rows[-1]['round_trip_us_p50']:8.1f} us (p99 {rows[-1]['round_trip_us_p99']:.1f})"
        )
    send.close()
    proc.wait(timeout=10)
    result = {
        **result_header("tp_step_ipc", f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"),
        "steps": args.steps,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
