"""DeepSeek MLA models with the Triton latent decode kernel (GPU, or CPU through Triton's
interpreter) against the torch reference engine: identical greedy tokens in float32."""

from __future__ import annotations

import pytest
from models.test_deepseek_v32 import save_tiny_v32

from seekd import LLM, SamplingParams
from seekd.layers.mla import MLAAttention
from seekd.layers.sparse_mla import SparseMLAAttention

pytestmark = pytest.mark.triton


LONG_PROMPT = [(i * 7) % 300 + 2 for i in range(506)]  # decodes past 512 keys: split-K on the CPU interpreter too


@pytest.mark.parametrize("variant,long_prompt", [("v2_lite", True), ("v3", False)])
def test_kernel_decode_generates_the_reference_tokens(kernel_device, tiny_deepseek, tmp_path, variant, long_prompt):
    """The fused norm/rope/cache kernel, q' without cats and the latent decode kernel (with split-K)
    against the torch engine, token for token."""
    tiny_deepseek(variant, tmp_path / "model")
    # 200 keys: split-K on the GPU; the long prompt's prefill is slow in the interpreter, so one variant
    prompts = [[*range(10, 50), 7], [5, 6, 7, 8], list(range(100, 300)), *([LONG_PROMPT] if long_prompt else [])]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(str(tmp_path / "model"), data_dir=str(tmp_path / backend), num_kv_blocks=128, block_size=16,
                  device=kernel_device, dtype="float32", attention_backend=backend, show_progress=False)
        layers = list(llm.engine.runner.model.attention_layers())
        assert all(isinstance(m, MLAAttention) and m.use_kernel == (backend == "triton") for m in layers)
        outs[backend] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert outs["triton"] == outs["torch"]


def test_sparse_mla_with_kernels_on_generates_the_reference_tokens(kernel_device, tmp_path):
    """DeepSeek-V3.2's sparse MLA keeps its own decode (project_and_cache, then the indexer's
    selection), never the dense fused path, while the triton backend turns its kernels on."""
    save_tiny_v32(tmp_path / "model", index_topk=12)
    prompts = [[*range(10, 50), 7], [5, 6, 7, 8]]
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(str(tmp_path / "model"), data_dir=str(tmp_path / backend), num_kv_blocks=64, block_size=16,
                  device=kernel_device, dtype="float32", attention_backend=backend, show_progress=False)
        layers = list(llm.engine.runner.model.attention_layers())
        assert all(isinstance(m, SparseMLAAttention) and m.use_kernel == (backend == "triton") for m in layers)
        outs[backend] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert outs["triton"] == outs["torch"]
