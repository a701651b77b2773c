"""DeepSeek MLA models with the Triton latent decode kernel (GPU, or CPU through Triton's
interpreter) against the torch reference engine: identical greedy tokens in float32."""

from __future__ import annotations

import pytest

from seekd import LLM, SamplingParams
from seekd.layers.mla import MLAAttention

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("variant", ["v2_lite", "v3"])
def test_kernel_decode_generates_the_reference_tokens(kernel_device, tiny_deepseek, tmp_path, variant):
    tiny_deepseek(variant, tmp_path / "model")
    prompts = [[*range(10, 50), 7], [5, 6, 7, 8], list(range(100, 300))]  # 200 keys: split-K on the GPU
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outs = {}
    for backend in ("torch", "triton"):
        llm = LLM(str(tmp_path / "model"), data_dir=str(tmp_path / backend), num_kv_blocks=128, block_size=16,
                  device=kernel_device, dtype="float32", attention_backend=backend, show_progress=False)
        layers = list(llm.engine.runner.model.attention_layers())
        assert all(isinstance(m, MLAAttention) and m.use_kernel == (backend == "triton") for m in layers)
        outs[backend] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    assert outs["triton"] == outs["torch"]
