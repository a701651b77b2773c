"""Sampler draw cost on this machine: `Sampler.sample` over a DeepSeek-sized vocabulary for sampled
(temperature 1) and seeded rows, median of repeats, CPU.

`--before REF` also times the sampler of another commit (checked out into a temporary worktree and
imported from there), so one run compares the two on the same machine under the same load."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROWS = (1, 16, 64)


def time_ms(vocab: int, rows: int, seeded: bool, repeats: int) -> float:
    from seekd import SamplingParams
    from seekd.engine.request import Request
    from seekd.engine.sampler import Sampler, SamplingBatch

    params = [SamplingParams(temperature=1.0, seed=i if seeded else None) for i in range(rows)]
    requests = [Request(f"r{i}", [1], p, max_output_tokens=8) for i, p in enumerate(params)]
    batch = SamplingBatch.from_requests(requests, vocab, torch.device("cpu"))
    sampler = Sampler(torch.device("cpu"))
    logits = torch.randn(rows, vocab)
    times = []
    for _ in range(repeats + 1):  # the first call pays for lazy initialisation
        start = time.perf_counter()
        sampler.sample(logits.clone(), batch)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[1:])


def measure(vocab: int, repeats: int) -> dict[str, float]:
    return {
        f"{kind} x{n}": time_ms(vocab, n, kind == "seeded", repeats) for kind in ("sampled", "seeded") for n in ROWS
    }


def measure_commit(ref: str, vocab: int, repeats: int) -> dict[str, float]:
    """The same measurement with seekd imported from `ref`'s tree (this script runs it there)."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), ref], cwd=root, check=True)
        try:
            here = str(Path(__file__).resolve().parent)
            code = (
                f"import sys, json; sys.path[:0] = [{str(tree)!r}, {here!r}]; import sampler_draw; "
                f"print(json.dumps(sampler_draw.measure({vocab}, {repeats})))"
            )
            out = subprocess.run([sys.executable, "-c", code], cwd=tree, check=True, capture_output=True, text=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from seekd.bench.report import result_header  # not at the top: --before imports this file into an older tree

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=129280)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--before", metavar="REF", help="also time the sampler of this commit")
    parser.add_argument("--out", default="benchmarks/results/sampler_draw_cpu.json")
    args = parser.parse_args()
    result = {
        **result_header("sampler_draw", f"cpu ({platform.machine()}), {torch.get_num_threads()} torch threads"),
        "vocab": args.vocab,
        "ms_median": measure(args.vocab, args.repeats),
    }
    if args.before:
        commit = subprocess.run(["git", "rev-parse", args.before], capture_output=True, text=True, check=True)
        result["before"] = {
            "commit": commit.stdout.strip(),
            "ms_median": measure_commit(args.before, args.vocab, args.repeats),
        }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name, ms in result["ms_median"].items():
        before = result.get("before", {}).get("ms_median", {}).get(name)
        print(f"{name:<12} {ms:8.2f} ms" + (f"   before {before:8.2f} ms" if before is not None else ""))


if __name__ == "__main__":
    main()
