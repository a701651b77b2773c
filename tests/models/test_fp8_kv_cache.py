"""`kv_cache_dtype fp8` on whole tiny models: against the same engine with a full-precision cache over
teacher-forced decode positions (Qwen2; DeepSeek-V2-Lite/V3's MLA latents; V3.2's indexer keys; V4's
window keys and compressed entries), the Triton kernels against the torch reference on the same FP8
cache, the engine paths that reuse cached FP8 entries, and the memory the FP8 cache saves.

What the agreement bounds can be on these models: their random weights give nearly flat next-token
distributions (mean top-1 probability 2-5 % over 384 tokens), so top-1 flips wherever two logits
nearly tie. Measured over the 2,000 positions below (float32 model): a bf16 cache already drops to
99.3 / 99.5 / 98.6 % top-1 (Qwen2 / V2-Lite / V3), a per-token int8 cache to 98.3 / 98.8 / 97.2 %, and
e4m3 (3 mantissa bits, about 2.6 % rms relative error per value whatever the scale) to 90.8 / 94.2 /
90.4 % with mean KL 2.3e-3 / 5.4e-4 / 5.6e-3. The bounds below pin those numbers with some room.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from decode_agreement import Agreement, agreement, decode_logits, greedy_sequences
from models.test_deepseek_v4 import V4_ENGINE_PROMPTS, save_tiny_v4
from models.test_deepseek_v32 import save_tiny_v32
from parity import assert_all_blocks_free

from seekd import LLM, SamplingParams
from seekd.layers.kv_quant import FP8

# 8 prompts x 250 decode tokens = 2,000 decode positions; odd lengths, one token, several blocks
PROMPTS = [[(i * 37 + j * 11) % 350 + 2 for j in range(n)] for i, n in enumerate([5, 17, 31, 8, 64, 1, 23, 50])]
DECODE = 250


def make_llm(folder, kv_cache_dtype: str, backend: str = "torch", **overrides) -> LLM:
    base = dict(
        data_dir=str(folder.parent / "data"),
        num_kv_blocks=256,
        block_size=16,
        dtype="float32",
        attention_backend=backend,
        kv_cache_dtype=kv_cache_dtype,
        show_progress=False,
    )
    return LLM(str(folder), **{**base, **overrides})


def compare(reference: LLM, candidate: LLM, prompts: list[list[int]], decode: int) -> Agreement:
    """Both engines teacher-forced along the reference's greedy continuations."""
    sequences = greedy_sequences(reference, prompts, decode)
    prompt_lens = [len(p) for p in prompts]
    result = agreement(
        decode_logits(reference, sequences, prompt_lens), decode_logits(candidate, sequences, prompt_lens)
    )
    assert result.positions == len(prompts) * decode
    return result


@pytest.fixture
def checkpoint(qwen2_model, tiny_deepseek, tmp_path) -> Callable[[str], Path]:
    """The tiny checkpoint of a model: qwen2 (shared by the session), a DeepSeek variant, v32 or v4."""

    def make(model: str) -> Path:
        if model == "qwen2":
            return qwen2_model[0]
        folder = tmp_path / "model"
        if model == "v32":
            save_tiny_v32(folder, index_topk=12)
        elif model == "v4":
            save_tiny_v4(folder)
        else:
            tiny_deepseek(model, folder)
        return folder

    return make


@pytest.mark.parametrize("model,min_top1,max_kl", [("qwen2", 0.88, 5e-3), ("v2_lite", 0.88, 2e-3), ("v3", 0.88, 1e-2)])
def test_fp8_cache_against_the_float32_cache(checkpoint, model, min_top1, max_kl):
    """2,000 decode positions; Qwen2's K/V heads, V2-Lite's and V3's MLA latents (c_kv and k_pe)."""
    folder = checkpoint(model)
    result = compare(make_llm(folder, "auto"), make_llm(folder, "fp8"), PROMPTS, DECODE)
    assert result.top1 >= min_top1 and result.mean_kl <= max_kl, str(result)


@pytest.mark.parametrize("model,min_top1,max_kl", [("v32", 0.5, 0.1), ("v4", 0.7, 3e-2)])
def test_sparse_and_compressed_fp8_caches_against_the_float32_cache(checkpoint, model, min_top1, max_kl):
    """V3.2 (latent + indexer keys) and V4 (window keys + compressed entries; compressor states stay
    float32), over fewer positions. Their discrete top-k selections make them far more sensitive: a
    bf16 cache measures 90.2 / 96.8 % top-1 (KL 8.7e-3 / 1.0e-3); FP8 62.0 % over these 300 positions
    (51.5 % over 2,000) / 77.5 % over these 400 (KL 5.0e-2 / 1.5e-2)."""
    folder = checkpoint(model)
    fp8 = make_llm(folder, "fp8")
    prompts = PROMPTS[: 3 if model == "v32" else 4]
    result = compare(make_llm(folder, "auto"), fp8, prompts, 100)
    assert result.top1 >= min_top1 and result.mean_kl <= max_kl, str(result)
    layers = list(fp8.engine.runner.model.attention_layers())
    caches = [layer.kv_cache for layer in layers] if model == "v32" else [layer.kv_caches["kv"] for layer in layers]
    assert all(cache.dtype == FP8 for cache in caches)


@pytest.mark.triton
@pytest.mark.parametrize("model", ["qwen2", "v2_lite"])
def test_triton_kernels_over_the_fp8_cache_match_the_torch_reference(kernel_device, checkpoint, model):
    """The fused rotary + FP8 cache write and paged attention (Qwen2), and the fused MLA norm/rope/FP8
    latent write and latent decode kernel (V2-Lite), against the torch paths on FP8 caches (float32:
    the kernels' products are exact, so only rare one-step code moves of the writers separate them)."""
    folder = checkpoint(model)
    prompts = [PROMPTS[1], PROMPTS[5], PROMPTS[6]]
    reference = make_llm(folder, "fp8", "torch", device=kernel_device)
    candidate = make_llm(folder, "fp8", "triton", device=kernel_device)
    result = compare(reference, candidate, prompts, 8)
    assert result.top1 >= 0.97 and result.mean_kl <= 1e-6, str(result)


ENGINE_PROMPTS = [[*range(10, 42), 200 + i, 201, 202 + i] for i in range(3)] + [list(range(100, 113))]
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
TIGHT = {
    "qwen2": dict(num_kv_blocks=14),
    "v3": dict(num_kv_blocks=14),
    "v4": dict(num_kv_blocks=18, max_num_batched_tokens=48),
}


@pytest.mark.parametrize("model", ["qwen2", "v3", "v4"])
def test_prefix_hits_preemption_and_chunked_prefill_keep_the_fp8_output(checkpoint, model):
    """Cached FP8 codes and scales serve prefix hits, survive preemption by recompute and chunked
    prefill: the greedy output of a roomy FP8 run each time, every block back in the pool (V4: FP8
    window keys and entries beside float32 compressor states in the shared arena)."""
    folder = checkpoint(model)
    prompts = V4_ENGINE_PROMPTS if model == "v4" else ENGINE_PROMPTS

    def generate(llm: LLM) -> list[list[int]]:
        outs = [o.outputs[0].token_ids for o in llm.generate(prompts, GREEDY)]
        assert_all_blocks_free(llm)
        return outs

    roomy = generate(make_llm(folder, "fp8", block_size=8, enable_prefix_caching=False))
    hits = make_llm(folder, "fp8", block_size=8)
    hits.generate(prompts[0], GREEDY)
    assert generate(hits) == roomy
    assert hits.engine.scheduler.kv.prefix_hits > 0
    tight = make_llm(folder, "fp8", block_size=8, enable_prefix_caching=False, **TIGHT[model])
    assert generate(tight) == roomy
    assert tight.engine.scheduler.num_preemptions > 0
    chunked = make_llm(folder, "fp8", block_size=8, max_num_batched_tokens=7, enable_prefix_caching=False)
    assert generate(chunked) == roomy


def test_fp8_cache_holds_more_blocks_in_the_same_memory(qwen2_model):
    """Memory-based sizing counts codes and scales: Qwen2-tiny's float32 token costs 2 layers x 256 B,
    its FP8 token 2 x (64 code + 16 scale) B, so the same budget holds 3.2x the blocks."""
    folder = qwen2_model[0]
    sized = {
        dtype: make_llm(folder, dtype, num_kv_blocks=None, cpu_kv_cache_gib=0.002, max_num_seqs=64)
        for dtype in ("auto", "fp8")
    }
    blocks = {dtype: llm.engine.runner.num_blocks for dtype, llm in sized.items()}
    assert sized["fp8"].engine.runner.kv_bytes_per_block() == 2 * 16 * (2 * 2 * 16 + 2 * 2 * 4)
    assert blocks["fp8"] / blocks["auto"] == pytest.approx(3.2, rel=0.01)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["qwen2", "v2_lite", "v3"])
def test_gpu_bf16_fp8_cache_with_cuda_graphs_against_the_bf16_cache(checkpoint, model):
    """The acceptance measurement on the GPU: bf16 models, the triton backend with decode CUDA graphs,
    2,000 decode positions; the numbers are printed (pytest -s) for the results file."""
    folder = checkpoint(model)
    engines = [make_llm(folder, kv, "triton", device="cuda", dtype="bfloat16") for kv in ("auto", "fp8")]
    assert all(llm.engine.runner.decode_graphs is not None for llm in engines)
    result = compare(*engines, PROMPTS, DECODE)
    print(f"{model} bf16, triton + CUDA graphs, fp8 vs bf16 cache: {result}")
    assert result.top1 >= 0.85 and result.mean_kl <= 2e-2, str(result)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["qwen2", "v3"])
def test_gpu_triton_fp8_decode_with_cuda_graphs_matches_the_torch_reference(checkpoint, model):
    """float32 on the GPU: the triton backend's FP8 kernels replayed in CUDA graphs against the torch
    reference on its FP8 cache, over 2,000 decode positions."""
    folder = checkpoint(model)
    candidate = make_llm(folder, "fp8", "triton", device="cuda")
    assert candidate.engine.runner.decode_graphs is not None
    result = compare(make_llm(folder, "fp8", "torch", device="cuda"), candidate, PROMPTS, DECODE)
    assert result.top1 >= 0.99 and result.mean_kl <= 1e-5, str(result)
