"""Where the host time of an offline run goes: the throughput workload under cProfile.

Time inside `tolist`/`item` is mostly waiting for the GPU; everything else is host overhead that
the GPU waits for unless it overlaps.

    python benchmarks/profile_offline.py --num-requests 256 --output-len 100 200
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys

from offline_throughput import SHAPES, make_model_folder, random_workload, timed

from seekd import LLM, SamplingParams


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="r1-distill-qwen-7b", choices=sorted(SHAPES))
    parser.add_argument("--num-requests", type=int, default=256)
    parser.add_argument("--input-len", type=int, nargs=2, default=(100, 1024))
    parser.add_argument("--output-len", type=int, nargs=2, default=(100, 200))
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    llm = LLM(
        str(make_model_folder(args.shape)),
        load_format="dummy",
        dtype="bfloat16",
        device="cuda",
        max_model_len=4096,
        show_progress=False,
    )
    prompts, outputs = random_workload(
        args.num_requests, 0, args.input_len, args.output_len, SHAPES[args.shape]["vocab_size"]
    )
    params = [SamplingParams(temperature=0.0, max_tokens=o, ignore_eos=True) for o in outputs]
    llm.generate(prompts[:4], params[:4])
    profiler = cProfile.Profile()
    profiler.enable()
    elapsed, results = timed(lambda: llm.generate(prompts, params))
    profiler.disable()
    tokens = sum(len(r.outputs[0].token_ids) for r in results)
    print(f"{tokens} output tokens in {elapsed:.2f} s = {tokens / elapsed:.0f} tok/s (under the profiler)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
