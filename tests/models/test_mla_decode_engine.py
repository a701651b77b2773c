"""DeepSeek MLA models with the Triton latent decode kernel (GPU, or CPU through Triton's
interpreter) against the torch reference engine: identical greedy tokens in float32."""

from __future__ import annotations

import pytest
from kernel_env import INTERPRETED
from models.test_deepseek_v32 import save_tiny_v32

from seekd import LLM, SamplingParams
from seekd.layers.mla import MLAAttention
from seekd.layers.sparse_mla import SparseMLAAttention

pytestmark = pytest.mark.triton


LONG_PROMPT = [(i * 7) % 300 + 2 for i in range(506)]  # decodes past 512 keys: split-K on the CPU interpreter too


def assert_backends_agree(
    folder, device: str, prompts: list[list[int]], max_tokens: int, num_kv_blocks: int, layer_type: type
) -> None:
    """Greedy tokens of the torch and triton engines are equal, with every attention layer of
    `layer_type` and its kernels on exactly under triton."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(
            str(folder),
            data_dir=str(folder.parent / backend),
            num_kv_blocks=num_kv_blocks,
            block_size=16,
            device=device,
            dtype="float32",
            attention_backend=backend,
            show_progress=False,
        )
        layers = list(llm.engine.runner.model.attention_layers())
        assert all(isinstance(m, layer_type) and m.use_kernel == (backend == "triton") for m in layers)
        outs[backend] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert outs["triton"] == outs["torch"]


@pytest.mark.parametrize("variant,long_prompt", [("v2_lite", True), ("v3", False)])
def test_kernel_decode_generates_the_reference_tokens(kernel_device, tiny_deepseek, tmp_path, variant, long_prompt):
    """The fused norm/rope/cache kernel, q' without cats and the latent decode kernel (with split-K)
    against the torch engine, token for token."""
    tiny_deepseek(variant, tmp_path / "model")
    # 200 keys: split-K on the GPU; the long prompt's prefill is slow in the interpreter, so one variant
    prompts = [[*range(10, 50), 7], [5, 6, 7, 8], list(range(100, 300)), *([LONG_PROMPT] if long_prompt else [])]
    # 8 tokens decode the long prompt past 512 keys; the interpreter is slow beyond that
    assert_backends_agree(tmp_path / "model", kernel_device, prompts, 8 if INTERPRETED else 12, 128, MLAAttention)


def test_sparse_mla_with_kernels_on_generates_the_reference_tokens(kernel_device, tmp_path):
    """DeepSeek-V3.2's sparse MLA keeps its own decode (project_and_cache, then the indexer's
    selection), never the dense fused path, while the triton backend turns its kernels on."""
    save_tiny_v32(tmp_path / "model", index_topk=12)
    assert_backends_agree(
        tmp_path / "model", kernel_device, [[*range(10, 50), 7], [5, 6, 7, 8]], 8, 64, SparseMLAAttention
    )
