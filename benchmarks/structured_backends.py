"""xgrammar vs llguidance: per-token cost of grammar-constrained decoding with DeepSeek's tokenizer.

The numbers that chose seekd's structured-output library. For each library, B matchers on bounded
JSON schemas are driven through random valid token paths: each step picks a random allowed token
(untimed). Both compile compact JSON: with free whitespace a random walk spends nearly every step
choosing among ~130 blank tokens, the cheapest state there is. Timed per step (mean, since the
rare expensive states, inside strings, are what costs): filling the batch bitmask on the host (the
library's batched call) and advancing every matcher by its token. Applying the mask to logits is
our own code for both (benchmarks/structured_overhead.py measures it). Also the compile time of one
schema (cold, tokenizer loaded) and how many documents the walks completed.

    python benchmarks/structured_backends.py [--steps 300] [--batch-sizes 1 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

from seekd.bench.report import result_header
from seekd.models.demo import _tokenizer_source as demo_tokenizer_folder

SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "color": {"enum": ["red", "green", "blue"]},
        },
        "required": ["name", "age", "color"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 4},
            "score": {"type": "integer", "minimum": -5, "maximum": 5},
        },
        "required": ["ok", "tags", "score"],
        "additionalProperties": False,
    },
]


def allowed_ids(bitmask_row: np.ndarray, vocab_size: int) -> np.ndarray:
    bits = np.unpackbits(bitmask_row.view(np.uint8), bitorder="little")[:vocab_size]
    return np.flatnonzero(bits)


class LLGuidanceDriver:
    name = "llguidance"

    def __init__(self, tokenizer_json: str, vocab_size: int, eos: int, threads: int) -> None:
        import llguidance
        import llguidance.numpy

        self.lg = llguidance
        self.lgnp = llguidance.numpy
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos)
        self.executor = llguidance.LLExecutor(num_threads=threads)
        self.vocab_size = vocab_size

    def compile(self, schema: dict) -> str:
        compact = {"whitespace_flexible": False}
        grammar = self.lg.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=compact)
        self.lg.LLMatcher(self.tokenizer, grammar)  # construction compiles the lexer
        return grammar

    def matcher(self, compiled: str):
        return self.lg.LLMatcher(self.tokenizer, compiled)

    def bitmask(self, batch: int) -> np.ndarray:
        return self.lgnp.allocate_token_bitmask(batch, self.vocab_size)

    def fill(self, matchers: list, bitmask: np.ndarray) -> None:
        self.lgnp.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(matchers)], bitmask)

    def advance(self, matchers: list, tokens: list[int]) -> None:
        for m, t in zip(matchers, tokens):
            m.consume_token(t)

    def done(self, m) -> bool:
        return m.is_stopped() or m.is_error()

    def reset(self, m) -> None:
        m.reset()


class XGrammarDriver:
    name = "xgrammar"

    def __init__(self, tokenizer_json: str, vocab_size: int, eos: int, threads: int) -> None:
        import xgrammar as xgr
        from transformers import PreTrainedTokenizerFast

        self.xgr = xgr
        hf = PreTrainedTokenizerFast(tokenizer_object=__import__("tokenizers").Tokenizer.from_str(tokenizer_json))
        info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab_size, stop_token_ids=[eos])
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        self.batch = xgr.BatchGrammarMatcher(max_threads=threads)
        self.vocab_size = vocab_size

    def compile(self, schema: dict):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def bitmask(self, batch: int) -> np.ndarray:
        return self.xgr.allocate_token_bitmask(batch, self.vocab_size).numpy()

    def fill(self, matchers: list, bitmask: np.ndarray) -> None:
        import torch

        self.batch.batch_fill_next_token_bitmask(matchers, torch.from_numpy(bitmask))

    def advance(self, matchers: list, tokens: list[int]) -> None:
        self.xgr.BatchGrammarMatcher.batch_accept_token(matchers, tokens)

    def done(self, m) -> bool:
        return m.is_terminated()

    def reset(self, m) -> None:
        m.reset()


def run(driver, batch: int, steps: int, seed: int) -> dict:
    rng = random.Random(seed)
    start = time.perf_counter()
    compiled = [driver.compile(s) for s in SCHEMAS]
    compile_ms = (time.perf_counter() - start) * 1e3 / len(SCHEMAS)
    matchers = [driver.matcher(compiled[i % len(compiled)]) for i in range(batch)]
    bitmask = driver.bitmask(batch)
    fill_s, advance_s = [], []
    completed = 0
    for _ in range(steps):
        t0 = time.perf_counter()
        driver.fill(matchers, bitmask)
        t1 = time.perf_counter()
        tokens = [int(rng.choice(allowed_ids(bitmask[i], driver.vocab_size))) for i in range(batch)]
        t2 = time.perf_counter()
        driver.advance(matchers, tokens)
        t3 = time.perf_counter()
        fill_s.append(t1 - t0)
        advance_s.append(t3 - t2)
        for m in matchers:
            if driver.done(m):
                completed += 1
                driver.reset(m)
    fill_ms, advance_ms = 1e3 * float(np.mean(fill_s)), 1e3 * float(np.mean(advance_s))
    return {
        "library": driver.name,
        "batch": batch,
        "steps": steps,
        "compile_ms_per_schema": round(compile_ms, 2),
        "fill_ms_per_step_mean": round(fill_ms, 4),
        "advance_ms_per_step_mean": round(advance_ms, 4),
        "host_ms_per_step_mean": round(fill_ms + advance_ms, 4),
        "documents_completed": completed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=2, help="mask-filling threads, the same for both")
    parser.add_argument("--out", default="benchmarks/results/structured_backends_cpu.json")
    args = parser.parse_args()

    folder = demo_tokenizer_folder()
    tokenizer_json = (folder / "tokenizer.json").read_text()
    vocab = json.loads(tokenizer_json)
    vocab_size = max(len(vocab["model"]["vocab"]) + len(vocab["added_tokens"]), 129280)
    eos = next(t["id"] for t in vocab["added_tokens"] if t["content"] == "<｜end▁of▁sentence｜>")

    rows = []
    for cls in (LLGuidanceDriver, XGrammarDriver):
        t0 = time.perf_counter()
        driver = cls(tokenizer_json, vocab_size, eos, args.threads)
        setup_ms = (time.perf_counter() - t0) * 1e3
        for batch in args.batch_sizes:
            row = run(driver, batch, args.steps, seed=batch)
            row["tokenizer_setup_ms"] = round(setup_ms, 1)
            row["threads"] = args.threads
            rows.append(row)
    print(f"{'library':<12}{'batch':>6}{'fill ms':>10}{'advance ms':>12}{'host ms/step':>14}{'compile ms':>12}")
    for r in rows:
        print(
            f"{r['library']:<12}{r['batch']:>6}{r['fill_ms_per_step_mean']:>10.3f}"
            f"{r['advance_ms_per_step_mean']:>12.3f}{r['host_ms_per_step_mean']:>14.3f}"
            f"{r['compile_ms_per_schema']:>12.1f}"
        )
    versions = {lib: importlib.metadata.version(lib) for lib in ("llguidance", "xgrammar")}
    result = {
        **result_header(
            "structured_backends",
            f"cpu ({platform.processor() or platform.machine()})",
            command=" ".join([Path(sys.executable).name, *sys.argv]),
        ),
        "cpu_count": __import__("os").cpu_count(),
        "versions": versions,
        "threads": args.threads,
        "vocab_size": vocab_size,
        "schemas": SCHEMAS,
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
