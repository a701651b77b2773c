"""`seekd bench offline`: throughput of the in-process engine (no server, no HTTP).

On a GPU with a public model shape it runs benchmarks/offline_throughput.py, the reference benchmark
(roofline, batch-1 decode, TTFT, throughput). That script is CUDA-only, so on the CPU — or for a
model folder of your own — it measures throughput alone here, on the same seeded random workload.
"""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import seekd
from seekd.bench.report import host_info, result_header

SCRIPT = Path(seekd.__file__).resolve().parent.parent / "benchmarks" / "offline_throughput.py"

# Small enough to run on a laptop CPU in seconds; for checking the path, not for numbers.
TINY_SHAPES: dict[str, dict[str, Any]] = {
    "tiny-qwen2": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "float32",
    },
}


def run_script(argv: Sequence[str]) -> int:
    """The reference GPU benchmark, run as its own process with the same arguments."""
    if not SCRIPT.is_file():
        raise FileNotFoundError(f"{SCRIPT} not found: the GPU offline benchmark needs a seekd source checkout")
    return subprocess.call([sys.executable, str(SCRIPT), *argv])


def random_prompts(
    num: int, input_len: tuple[int, int], output_len: tuple[int, int], vocab: int, seed: int
) -> tuple[list[list[int]], list[int]]:
    """The same draw as the reference script: token ids in [min(1000, vocab/4), vocab - that)."""
    rng = random.Random(seed)
    margin = min(1000, vocab // 4)
    prompts, outputs = [], []
    for _ in range(num):
        prompts.append([rng.randrange(margin, vocab - margin) for _ in range(rng.randint(*input_len))])
        outputs.append(rng.randint(*output_len))
    return prompts, outputs


def run_in_process(
    *,
    model: str | None,
    shape: str | None,
    device: str,
    num_requests: int,
    input_len: tuple[int, int],
    output_len: tuple[int, int],
    seed: int,
    max_num_seqs: int,
    argv: Sequence[str],
) -> dict[str, Any]:
    from seekd import LLM, SamplingParams

    if model is None:
        if shape not in TINY_SHAPES:
            raise ValueError(f"shape {shape!r} is not a CPU shape; choose one of {sorted(TINY_SHAPES)} or --model DIR")
        folder = Path(tempfile.mkdtemp(prefix=f"seekd-bench-{shape}-"))
        (folder / "config.json").write_text(json.dumps(TINY_SHAPES[shape]))
        llm = LLM(
            str(folder),
            load_format="dummy",
            dtype="float32",
            device=device,
            max_num_seqs=max_num_seqs,
            show_progress=False,
        )
    else:
        llm = LLM(model, device=device, max_num_seqs=max_num_seqs, show_progress=False)
    vocab = json.loads((llm.engine.model_folder / "config.json").read_text())["vocab_size"]
    prompts, outputs = random_prompts(num_requests, input_len, output_len, vocab, seed)
    params = [SamplingParams(temperature=0.0, max_tokens=o, ignore_eos=True) for o in outputs]
    llm.generate(prompts[:2], params[:2])  # warm-up
    start = time.perf_counter()
    results = llm.generate(prompts, params)
    elapsed = time.perf_counter() - start
    out_tokens = sum(len(r.outputs[0].token_ids) for r in results)
    in_tokens = sum(len(p) for p in prompts)
    return {
        **result_header("offline_throughput", device, command="seekd " + shlex.join(argv)),
        "host": host_info(),
        "model": model or shape,
        "num_requests": num_requests,
        "input_len": list(input_len),
        "output_len": list(output_len),
        "elapsed_s": elapsed,
        "output_tokens": out_tokens,
        "output_tok_s": out_tokens / elapsed,
        "total_tok_s": (out_tokens + in_tokens) / elapsed,
    }
