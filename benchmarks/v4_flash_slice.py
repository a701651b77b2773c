"""Decode cost per layer of a full-width DeepSeek-V4-Flash slice, and its KV bytes per token.

A few consecutive layers of V4-Flash's real schedule (hidden 4096, 64 heads of 512, 256 routed
experts, CSA and HCA attention, hash-MoE then top-k MoE) with dummy weights: the whole model does
not fit one GPU in bf16, and every layer of a kind costs the same, so a slice measures what a
layer costs. Each decoder layer is timed with CUDA events around it during decode steps at batch 1
and 64, after a prompt of `--context` tokens per sequence.

    python benchmarks/v4_flash_slice.py --first-layer 2 --num-layers 4 --out benchmarks/results/v4_flash_slice_h100.json
    python benchmarks/v4_flash_slice.py --tiny --device cpu   # a smoke run of the script itself
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from offline_throughput import measure_copy_bandwidth

from seekd import LLM, SamplingParams
from seekd.bench.report import result_header
from seekd.engine.kv_cache_layout import KVCacheLayout, bytes_per_token_by_kind, page_bytes_per_token
from seekd.engine.request import EngineCoreRequest
from seekd.models.deepseek_v4 import build_attention, build_ropes, layer_types
from seekd.models.hf_config import HFConfig
from seekd.models.published_configs import CSA, HCA, V4_FLASH

# Dimensions that make the same schedule small enough for a CPU smoke run.
TINY = {
    "hidden_size": 64,
    "moe_intermediate_size": 32,
    "num_attention_heads": 4,
    "head_dim": 64,
    "q_lora_rank": 32,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "o_groups": 2,
    "o_lora_rank": 32,
    "index_n_heads": 4,
    "index_head_dim": 32,
    "index_topk": 16,
    "qk_rope_head_dim": 16,
    "vocab_size": 1024,
    "sliding_window": 16,
    "compress_rates": {CSA: 4, HCA: 16},
}


def slice_config(first: int, count: int, tiny: bool) -> dict:
    config = {**V4_FLASH, **(TINY if tiny else {})}
    config["layer_types"] = V4_FLASH["layer_types"][first : first + count]
    config["mlp_layer_types"] = V4_FLASH["mlp_layer_types"][first : first + count]
    config["num_hidden_layers"] = count
    return config


def full_model_kv(dtype: torch.dtype, block_size: int) -> dict:
    """KV bytes per token of all 43 layers of V4-Flash, from shapes alone (meta device)."""
    config = HFConfig(V4_FLASH)
    with torch.device("meta"):
        ropes = build_ropes(config)
        attention = [build_attention(config, kind, ropes) for kind in layer_types(config)]
    layout = KVCacheLayout(attention, dtype, block_size)
    return {"by_kind": bytes_per_token_by_kind(layout), "page_bytes_per_token": page_bytes_per_token(layout)}


class LayerTimer:
    """CUDA events (or host clocks on the CPU) around every decoder layer, while `recording`."""

    def __init__(self, layers: torch.nn.ModuleList, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.recording = False
        self.spans: list[list[tuple]] = [[] for _ in layers]
        for i, layer in enumerate(layers):
            layer.register_forward_pre_hook(lambda _m, _a, i=i: self._mark(i, start=True))
            layer.register_forward_hook(lambda _m, _a, _o, i=i: self._mark(i, start=False))

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _mark(self, i: int, start: bool) -> None:
        if not self.recording:
            return
        if start:
            self.spans[i].append((self._now(),))
        else:
            self.spans[i][-1] += (self._now(),)

    def per_layer_ms(self) -> list[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [statistics.median(a.elapsed_time(b) for a, b in spans) for spans in self.spans]
        return [statistics.median((b - a) * 1e3 for a, b in spans) for spans in self.spans]

    def reset(self) -> None:
        self.spans = [[] for _ in self.spans]


def decode_step_ms(llm: LLM, timer: LayerTimer, batch: int, context: int, steps: int) -> dict:
    """Per-layer and whole-step decode time with `batch` sequences of `context` prompt tokens."""
    engine = llm.engine
    vocab = engine.hf_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=steps + 8, ignore_eos=True)
    for i in range(batch):
        prompt = [(1000 + 7 * i + 13 * j) % vocab for j in range(context)]
        engine.add_request(
            EngineCoreRequest(request_id=f"b{batch}-{i}", prompt_token_ids=prompt, sampling_params=params)
        )
    while any(r.num_output_tokens < 2 for r in engine.scheduler.requests.values()):
        engine.step()
    timer.reset()
    timer.recording = True
    if timer.cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    if timer.cuda:
        torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) * 1e3 / steps
    timer.recording = False
    per_layer = timer.per_layer_ms()
    while engine.has_unfinished_requests():
        engine.step()
    return {"batch": batch, "context": context, "step_ms": wall_ms, "per_layer_ms": per_layer}


NUM_V4_FLASH_LAYERS = V4_FLASH["num_hidden_layers"]


def batch1_roofline(layers: torch.nn.ModuleList, device: str) -> dict:
    """Bytes one token's decode step reads per layer (every weight but the routed experts, of which the
    top-k's share) over the measured copy bandwidth."""
    per_layer = []
    for layer in layers:
        experts = getattr(layer.ffn, "experts", None)
        routed = {id(p) for p in experts.parameters()} if experts is not None else set()
        rest = sum(p.nbytes for p in layer.parameters() if id(p) not in routed)
        share = 0
        if experts is not None:
            top_k, num_experts = layer.ffn.gate.top_k, experts.w13_weight.shape[0]
            share = sum(p.nbytes for p in experts.parameters()) * top_k // num_experts
        per_layer.append(rest + share)
    result: dict = {"bytes_per_layer": per_layer}
    if device.startswith("cuda"):
        bandwidth = measure_copy_bandwidth(device)
        result["copy_bandwidth_gbs"] = bandwidth / 1e9
        result["roofline_ms_per_layer"] = [b / bandwidth * 1e3 for b in per_layer]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first-layer", type=int, default=2, help="index of the slice's first layer in V4-Flash")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small dimensions, for a CPU smoke run")
    parser.add_argument(
        "--quantization", default="auto", help="auto: FP4 experts + FP8 elsewhere, as V4 ships; none: all bf16"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    config = slice_config(args.first_layer, args.num_layers, args.tiny)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_text(json.dumps(config))
        dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
        llm = LLM(
            str(folder),
            load_format="dummy",
            dtype=dtype,
            device=args.device,
            max_model_len=args.context + args.steps + 64,
            max_num_seqs=max(args.batches),
            quantization=args.quantization,
            show_progress=True,
        )
    runner = llm.engine.runner
    timer = LayerTimer(runner.model.layers, args.device)
    runs = [decode_step_ms(llm, timer, b, args.context, args.steps) for b in args.batches]
    kinds = list(zip(config["layer_types"], config["mlp_layer_types"]))
    for run in runs:
        print(
            f"batch {run['batch']}: {run['step_ms']:.2f} ms/step; per layer "
            + ", ".join(f"{a.split('_')[0]}+{m} {t:.2f} ms" for (a, m), t in zip(kinds, run["per_layer_ms"]))
        )
    layout = runner.kv_layout
    roofline = batch1_roofline(runner.model.layers, args.device)
    for run in runs:
        in_layers = sum(run["per_layer_ms"])
        run["outside_layers_ms"] = run["step_ms"] - in_layers
        mean_layer = in_layers / len(run["per_layer_ms"])
        run["projected_full_model_step_ms"] = NUM_V4_FLASH_LAYERS * mean_layer + run["outside_layers_ms"]
        run["projected_full_model_tok_s"] = run["batch"] * 1e3 / run["projected_full_model_step_ms"]
    result = {
        **result_header(
            "v4_flash_slice",
            torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        ),
        "dtype": str(llm.engine.dtype),
        "tiny": args.tiny,
        "layers": [{"index": args.first_layer + i, "attention": a, "mlp": m} for i, (a, m) in enumerate(kinds)],
        "decode": runs,
        "slice_kv_bytes_per_token_by_kind": bytes_per_token_by_kind(layout),
        "slice_kv_page_bytes_per_token": page_bytes_per_token(layout),
        "v4_flash_kv_bytes_per_token": full_model_kv(llm.engine.dtype, llm.config.cache.block_size),
        "quantization": args.quantization,
        "batch1_roofline": roofline,
        "note": "attention runs the torch reference path on the GPU (no fused V4 attention kernels yet); "
        "projected_full_model_* = 43 layers at this slice's mean layer time + the slice's time outside layers",
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
