"""DeepSeek-V4 (sliding / CSA / HCA attention, mHC streams, hash + top-k MoE) against `transformers`,
and through the engine paths that reuse cached rows: prefix hits, preemption, chunked prefill."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from parity import (
    ENGINE_GREEDY,
    ENGINE_PROMPTS,
    assert_greedy_matches,
    assert_prefill_logits_match,
    generate_engine_prompts,
    randomize_weights,
)

from seekd import LLM
from seekd.models.deepseek_v4 import build_attention, build_ropes, layer_types
from seekd.models.hf_config import HFConfig

SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
CONFIG = dict(
    vocab_size=384, hidden_size=64, moe_intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
    head_dim=32, q_lora_rank=48, partial_rotary_factor=0.25, n_routed_experts=8, num_experts_per_tok=2,
    o_groups=2, o_lora_rank=16, index_n_heads=16, index_head_dim=16, index_topk=3, sliding_window=8,
    compress_rates={CSA: 4, HCA: 16}, layer_types=[SLIDING, CSA, HCA, CSA],
    mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe"], hc_mult=4, max_position_embeddings=1024,
    swiglu_limit=0.8, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=1,
    rope_parameters={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 64,
                     "beta_fast": 32, "beta_slow": 1},
)
_gen = torch.Generator().manual_seed(0)
# longer than the window (8), several CSA (4) and HCA (16) blocks, one below every block size
PROMPTS = [torch.randint(2, 384, (n,), generator=_gen).tolist() for n in (45, 3, 37)]


def save_tiny_v4(folder: Path) -> torch.nn.Module:
    """A tiny random transformers DeepSeek-V4 saved to `folder`; every weight random, hash table included."""
    torch.manual_seed(1234)
    model = transformers.DeepseekV4ForCausalLM(transformers.DeepseekV4Config(**CONFIG)).float().eval()
    randomize_weights(model)
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("tid2eid"):
                b.copy_(torch.stack([torch.randperm(CONFIG["n_routed_experts"])[:2] for _ in range(b.size(0))]))
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: on the shared 2-core machines, a second OpenMP thread makes each one ~1000x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_llm(folder: Path, **overrides) -> LLM:
    base = dict(data_dir=str(folder / "data"), num_kv_blocks=96, block_size=8, show_progress=False)
    return LLM(str(folder), **{**base, **overrides})


@pytest.fixture(scope="module")
def tiny_v4(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("v4")
    return folder, save_tiny_v4(folder)


def test_prefill_logits_match_transformers(tiny_v4):
    folder, hf_model = tiny_v4
    assert_prefill_logits_match(make_llm(folder), hf_model, PROMPTS)


def test_greedy_batch_and_one_by_one_match_transformers_generate(tiny_v4):
    folder, hf_model = tiny_v4
    assert_greedy_matches(make_llm(folder), hf_model, PROMPTS)


@pytest.fixture(scope="module")
def engine_reference(tiny_v4) -> list[list[int]]:
    return generate_engine_prompts(make_llm(tiny_v4[0], num_kv_blocks=128, enable_prefix_caching=False))


def test_prefix_cache_hits_reuse_cached_rows(tiny_v4, engine_reference):
    """A hit skips 32 tokens whose window keys, compressor states and compressed entries come from the cache."""
    llm = make_llm(tiny_v4[0], num_kv_blocks=128)
    llm.generate(ENGINE_PROMPTS[0], ENGINE_GREEDY)
    assert generate_engine_prompts(llm) == engine_reference
    assert llm.engine.scheduler.kv.prefix_hits >= 3 * 32


def test_preemption_under_tiny_block_budget_keeps_output(tiny_v4, engine_reference):
    llm = make_llm(tiny_v4[0], num_kv_blocks=10)  # 9 usable blocks; 3 requests need 6 each
    assert generate_engine_prompts(llm) == engine_reference
    assert llm.engine.scheduler.num_preemptions > 0


def test_chunked_prefill_keeps_output(tiny_v4, engine_reference):
    """Chunks of 7 end inside CSA and HCA blocks: blocks are pooled from states written by earlier chunks."""
    llm = make_llm(tiny_v4[0], num_kv_blocks=128, max_num_batched_tokens=7, enable_prefix_caching=False)
    assert generate_engine_prompts(llm) == engine_reference


def test_cache_rows_of_v4_flash_layer_kinds():
    """V4-Flash's shape (transformers' defaults): what one token costs in this one-row-per-token layout,
    against V3's 576-value latent and against what a multi-kind cache would keep per token."""
    config = HFConfig(transformers.DeepseekV4Config().to_dict())
    with torch.device("meta"):
        ropes = build_ropes(config)
        width = {kind: build_attention(config, kind, ropes).row_width for kind in (SLIDING, CSA, HCA)}
    # kv | compressor state (values + gates; CSA's two series) | entry | indexer state | indexer entry
    assert width == {SLIDING: 512, HCA: 512 + 1024 + 512, CSA: 512 + 2048 + 512 + 512 + 128}
    kinds = layer_types(config)
    row_bytes = 2 * sum(width[k] for k in kinds)
    compact = 2 * sum(640 / 4 if k == CSA else 512 / 128 if k == HCA else 0 for k in kinds)
    v3 = 61 * 576 * 2
    print(f"\nbf16 KV bytes per token: V4-Flash rows {row_bytes:,} ({kinds.count(CSA)} CSA, {kinds.count(HCA)} HCA, "
          f"{kinds.count(SLIDING)} sliding layers), V4-Flash entries only {compact:,.0f} + bounded window, "
          f"V3 {v3:,}")
    assert row_bytes == 2 * (20 * 3712 + 23 * 2048)


def test_indexer_selection_and_swiglu_clipping_decide_the_output(tiny_v4):
    """The parity above is not vacuous: attending to every compressed entry, or not clipping the
    experts' pre-activations, gives other logits."""
    llm = make_llm(tiny_v4[0])
    runner = llm.engine.runner
    reference = runner.prefill_logits(PROMPTS[0])
    csa_layers = [layer for layer in runner.model.attention_layers() if layer.indexer is not None]
    for layer in csa_layers:
        layer.indexer.topk = 1024
    assert (runner.prefill_logits(PROMPTS[0]) - reference).abs().max().item() > 1e-2
    for layer in csa_layers:
        layer.indexer.topk = CONFIG["index_topk"]
    for layer in runner.model.layers:
        layer.ffn.experts.swiglu_limit = layer.ffn.shared_experts.swiglu_limit = None
    assert (runner.prefill_logits(PROMPTS[0]) - reference).abs().max().item() > 1e-2
