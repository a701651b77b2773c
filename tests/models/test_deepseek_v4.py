"""DeepSeek-V4 (sliding / CSA / HCA attention, mHC streams, hash + top-k MoE) against `transformers`,
and through the engine paths that reuse cached entries of every cache kind: prefix hits, preemption,
chunked prefill, sliding-window freeing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from parity import (
    ENGINE_GREEDY,
    assert_all_blocks_free,
    assert_greedy_matches,
    assert_prefill_logits_match,
    generate_engine_prompts,
    randomize_weights,
)

from seekd import LLM, SamplingParams
from seekd.engine.kv_cache_layout import KVCacheLayout, bytes_per_token_by_kind, page_bytes_per_token
from seekd.engine.request import EngineCoreRequest
from seekd.models.deepseek_v4 import build_attention, build_ropes, layer_types
from seekd.models.hf_config import HFConfig

SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
CONFIG = dict(
    vocab_size=384,
    hidden_size=64,
    moe_intermediate_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    head_dim=32,
    q_lora_rank=48,
    partial_rotary_factor=0.25,
    n_routed_experts=8,
    num_experts_per_tok=2,
    o_groups=2,
    o_lora_rank=16,
    index_n_heads=16,
    index_head_dim=16,
    index_topk=3,
    sliding_window=8,
    compress_rates={CSA: 4, HCA: 16},
    layer_types=[SLIDING, CSA, HCA, CSA],
    mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe"],
    hc_mult=4,
    max_position_embeddings=1024,
    swiglu_limit=0.8,
    rms_norm_eps=1e-6,
    bos_token_id=0,
    eos_token_id=1,
    rope_parameters={
        "rope_type": "yarn",
        "factor": 16.0,
        "original_max_position_embeddings": 64,
        "beta_fast": 32,
        "beta_slow": 1,
    },
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


# Prefix hits come in multiples of every cache group's block (128 tokens here: the compressed
# entries' group); the shared prefix spans two such blocks, 34 sliding windows and 17 HCA blocks.
V4_SHARED_PREFIX = torch.randint(2, 384, (272,), generator=_gen).tolist()
V4_ENGINE_PROMPTS = [[*V4_SHARED_PREFIX, 200 + i, 201, 202 + i] for i in range(3)] + [list(range(100, 113))]


@pytest.fixture(scope="module")
def engine_reference(tiny_v4) -> list[list[int]]:
    return generate_engine_prompts(make_llm(tiny_v4[0], enable_prefix_caching=False), V4_ENGINE_PROMPTS)


def test_prefix_cache_hits_reuse_cached_entries(tiny_v4, engine_reference):
    """A hit skips 256 tokens whose window keys, compressor states and compressed entries come from
    the cache; every group serves it."""
    llm = make_llm(tiny_v4[0])
    kv = llm.engine.scheduler.kv
    assert kv.hit_granularity == 128
    llm.generate(V4_ENGINE_PROMPTS[0], ENGINE_GREEDY)
    assert generate_engine_prompts(llm, V4_ENGINE_PROMPTS) == engine_reference
    assert kv.prefix_hits == 3 * 256


def test_preemption_under_tiny_block_budget_keeps_output(tiny_v4, engine_reference):
    llm = make_llm(tiny_v4[0], num_kv_blocks=18, max_num_batched_tokens=48)  # 17 blocks: ~2 requests at once
    assert generate_engine_prompts(llm, V4_ENGINE_PROMPTS) == engine_reference
    assert llm.engine.scheduler.num_preemptions > 0


def test_chunked_prefill_keeps_output(tiny_v4, engine_reference):
    """Chunks of 7 end inside CSA and HCA blocks: blocks are pooled from states written by earlier chunks."""
    llm = make_llm(tiny_v4[0], max_num_batched_tokens=7, enable_prefix_caching=False)
    assert generate_engine_prompts(llm, V4_ENGINE_PROMPTS) == engine_reference


def test_sliding_groups_hold_a_bounded_number_of_blocks_far_past_the_window(tiny_v4):
    """Generating 200 tokens past an 8-token window: the sliding groups keep a few blocks, the
    compressed groups grow with the context, and the output equals a run without prefix caching."""
    llm = make_llm(tiny_v4[0])
    engine, kv = llm.engine, llm.engine.scheduler.kv
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    engine.add_request(EngineCoreRequest(request_id="long", prompt_token_ids=PROMPTS[1], sampling_params=params))
    most = [0] * len(kv.groups)
    while engine.has_unfinished_requests():
        engine.step()
        most = [max(a, b) for a, b in zip(most, kv.num_held_blocks("long") or most)]
    for shape, held in zip(kv.groups, most):
        if shape.sliding_window is not None:
            assert held <= (shape.sliding_window - 1 + len(PROMPTS[1])) // shape.block_tokens + 2, shape
        else:
            assert held == -(-203 // shape.block_tokens), shape
    assert_all_blocks_free(llm)


def test_kv_bytes_per_token_of_v4_flash_cache_kinds():
    """V4-Flash's shape (transformers' defaults, bf16, 16-token blocks): per cache kind, what a token
    keeps for good and what one sliding window holds, beside the one-row-per-token layout and V3."""
    config = HFConfig(transformers.DeepseekV4Config().to_dict())
    kinds = layer_types(config)
    with torch.device("meta"):
        ropes = build_ropes(config)
        layout = KVCacheLayout([build_attention(config, kind, ropes) for kind in kinds], torch.bfloat16, 16)
    report = bytes_per_token_by_kind(layout)
    assert (kinds.count(CSA), kinds.count(HCA), kinds.count(SLIDING)) == (20, 23, 0)
    assert {k: (v["group"], v["layers"], v["per_token"], v["per_request_window"]) for k, v in report.items()} == {
        "sliding_kv": ("window_128", 43, 0, 43 * 512 * 2 * 128),
        "compressor_state_128": ("window_128", 23, 0, 23 * 1024 * 2 * 128),
        "compressor_state_4": ("window_8", 20, 0, 20 * (2048 + 512) * 2 * 8),
        "compressed_4": ("full", 20, 20 * (512 + 128) * 2 / 4, 0),
        "compressed_128": ("full", 23, 23 * 512 * 2 / 128, 0),
    }
    per_token = sum(v["per_token"] for v in report.values())
    one_row_layout, v3 = 2 * (20 * 3712 + 23 * 2048), 61 * 576 * 2
    assert (per_token, one_row_layout, v3) == (6584, 242_688, 70_272)
    assert page_bytes_per_token(layout) == per_token  # the full-context pages are filled exactly
    blocks = {g.shape.name: g.shape.block_tokens for g in layout.groups}
    assert blocks == {"window_128": 16, "window_8": 16, "full": 256}
    assert layout.hit_granularity == 256
    print(
        f"\nbf16 KV bytes per token, V4-Flash: {per_token:,.0f} for good ("
        + ", ".join(f"{k} {v['per_token']:,.0f}" for k, v in report.items() if v["per_token"])
        + ") + per request window "
        + ", ".join(f"{k} {v['per_request_window'] / 2**20:.2f} MiB" for k, v in report.items() if not v["per_token"])
        + f"; one row per token {one_row_layout:,}; V3 latent (576 values x 61 layers) {v3:,}; "
        f"page {layout.page_bytes:,} B, hit granularity {layout.hit_granularity} tokens"
    )


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
