"""DeepSeek-V3.2 (sparse MLA + lightning indexer over the paged cache) against `transformers`, and
through the engine paths that reuse cached indexer keys: prefix hits, preemption, chunked prefill."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from parity import ENGINE_GREEDY, ENGINE_PROMPTS, generate_engine_prompts, hf_greedy, randomize_weights
from safetensors.torch import load_file, save_file

from seekd import LLM, SamplingParams
from seekd.layers.rotary import RotaryEmbedding
from seekd.models.deepseek_v32 import build_sparse_mla
from seekd.models.hf_config import HFConfig

CONFIG = dict(
    vocab_size=384,
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    q_lora_rank=48,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=24,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=1,
    n_routed_experts=8,
    num_experts_per_tok=2,
    first_k_dense_replace=1,
    n_shared_experts=1,
    n_group=4,
    topk_group=2,
    norm_topk_prob=True,
    routed_scaling_factor=2.5,
    index_n_heads=8,
    index_head_dim=16,
    rope_parameters={
        "rope_type": "yarn",
        "factor": 40.0,
        "original_max_position_embeddings": 64,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "beta_fast": 32,
        "beta_slow": 1,
        "rope_theta": 10000.0,
    },
)
SPARSE_TOPK = 12  # well below the prompt lengths: the indexer's choice decides the output
_gen = torch.Generator().manual_seed(0)
PROMPTS = [torch.randint(2, 384, (n,), generator=_gen).tolist() for n in (52, 9, 41)]
GREEDY = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)


def save_tiny_v32(folder: Path, index_topk: int) -> torch.nn.Module:
    """A tiny random transformers DeepSeek-V3.2 saved to `folder`, every weight random."""
    config = transformers.DeepseekV32Config(**CONFIG, index_topk=index_topk)
    torch.manual_seed(1234)
    model = transformers.DeepseekV32ForCausalLM(config).float().eval()
    randomize_weights(model)
    model.save_pretrained(folder)
    return model


def make_llm(folder: Path, **overrides) -> LLM:
    base = dict(data_dir=str(folder / "data"), num_kv_blocks=96, block_size=8, show_progress=False)
    return LLM(str(folder), **{**base, **overrides})


def hf_logits(hf_model: torch.nn.Module, prompt: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([prompt])).logits[0]


def set_mla_mode(llm: LLM, mode: str) -> None:
    for layer in llm.engine.runner.model.attention_layers():
        layer.mode = mode


@dataclass
class Tiny:
    folder: Path
    hf_model: torch.nn.Module
    expected: list[list[int]]  # HF's 32 greedy tokens for each of PROMPTS


def tiny(folder: Path, index_topk: int) -> Tiny:
    hf_model = save_tiny_v32(folder, index_topk)
    return Tiny(folder, hf_model, [hf_greedy(hf_model, p, 32) for p in PROMPTS])


@pytest.fixture(scope="module")
def dense_topk(tmp_path_factory) -> Tiny:
    """index_topk covers every sequence here, so no tie in the indexer scores can decide anything."""
    return tiny(tmp_path_factory.mktemp("dense_topk"), 128)


@pytest.fixture(scope="module")
def sparse_topk(tmp_path_factory) -> Tiny:
    """12 of 41-84 tokens: the indexer's choice decides the output (random inputs: no ties)."""
    return tiny(tmp_path_factory.mktemp("sparse_topk"), SPARSE_TOPK)


@pytest.fixture(scope="module", params=["dense_topk", "sparse_topk"])
def model_pair(request) -> tuple[LLM, Tiny]:
    model = request.getfixturevalue(request.param)
    return make_llm(model.folder), model


def test_cache_row_holds_latent_and_indexer_key():
    """The published V3.2 shape: 576 latent values + 128 indexer-key values per token and layer."""
    config = HFConfig(
        {
            "hidden_size": 7168,
            "num_attention_heads": 128,
            "q_lora_rank": 1536,
            "kv_lora_rank": 512,
            "qk_nope_head_dim": 128,
            "qk_rope_head_dim": 64,
            "v_head_dim": 128,
            "index_n_heads": 64,
            "index_head_dim": 128,
            "index_topk": 2048,
        }
    )
    with torch.device("meta"):
        rope = RotaryEmbedding(64, 64, 16, 10000.0, interleaved=True)
        attn = build_sparse_mla(config, rope)
    spec = attn.kv_cache_spec(torch.bfloat16)
    assert spec.entry_shape == (576 + 128,)
    v32, v3 = 61 * spec.bytes_per_block(1), 61 * 576 * 2
    print(
        f"\nKV cache per token (bf16, 61 layers): DeepSeek-V3.2 {v32:,} B ({spec.bytes_per_block(1)} B/layer: "
        f"latent 1152 + indexer key 256), DeepSeek-V3 {v3:,} B ({v32 / v3:.2f}x)"
    )
    assert v32 == 61 * 704 * 2


def test_prefill_logits_match_transformers(model_pair):
    llm, model = model_pair
    for prompt in PROMPTS:
        ours = llm.engine.runner.prefill_logits(prompt)
        assert (ours - hf_logits(model.hf_model, prompt)).abs().max().item() < 1e-4


def test_greedy_batch_and_one_by_one_match_transformers_generate(model_pair):
    llm, model = model_pair
    assert len({tuple(e) for e in model.expected}) == len(PROMPTS)  # the model is not degenerate
    assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)] == model.expected
    assert [llm.generate(p, GREEDY)[0].outputs[0].token_ids for p in PROMPTS] == model.expected


def test_top_k_selection_changes_the_output(sparse_topk):
    """Sparse attention is really sparse here: attending to every token gives other logits."""
    llm = make_llm(sparse_topk.folder)
    sparse = llm.engine.runner.prefill_logits(PROMPTS[0])
    for layer in llm.engine.runner.model.attention_layers():
        layer.indexer.topk = 1024
    assert (llm.engine.runner.prefill_logits(PROMPTS[0]) - sparse).abs().max().item() > 1e-2


@pytest.mark.parametrize("mode", ["naive", "absorbed"])
def test_masked_and_gathered_sparse_attention_each_match_transformers(sparse_topk, mode):
    """naive = dense attention under the selection mask; absorbed = attention over the gathered top-k
    latents. Each alone, for prefill and decode (the default uses the gather only for decode)."""
    llm = make_llm(sparse_topk.folder)
    set_mla_mode(llm, mode)
    prompt = PROMPTS[0]
    assert (llm.engine.runner.prefill_logits(prompt) - hf_logits(sparse_topk.hf_model, prompt)).abs().max() < 1e-4
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outs = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    assert outs == [e[:12] for e in sparse_topk.expected]


@pytest.fixture(scope="module")
def engine_reference(sparse_topk):
    return generate_engine_prompts(make_llm(sparse_topk.folder, num_kv_blocks=128, enable_prefix_caching=False))


def test_prefix_cache_hits_reuse_cached_indexer_keys(sparse_topk, engine_reference):
    llm = make_llm(sparse_topk.folder, num_kv_blocks=128)
    llm.generate(ENGINE_PROMPTS[0], ENGINE_GREEDY)
    assert generate_engine_prompts(llm) == engine_reference
    assert llm.engine.scheduler.kv.prefix_hits >= 3 * 32


def test_preemption_under_tiny_block_budget_keeps_output(sparse_topk, engine_reference):
    llm = make_llm(sparse_topk.folder, num_kv_blocks=10)  # 9 usable blocks; 3 requests need 6 each
    assert generate_engine_prompts(llm) == engine_reference
    assert llm.engine.scheduler.num_preemptions > 0


def test_chunked_prefill_keeps_output(sparse_topk, engine_reference):
    llm = make_llm(sparse_topk.folder, num_kv_blocks=128, max_num_batched_tokens=7, enable_prefix_caching=False)
    assert generate_engine_prompts(llm) == engine_reference


def quantize_block_fp8(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's block FP8: per 128x128 block, scale = amax / 448, stored as `weight_scale_inv`."""
    rows, cols = w.shape
    nr, nc = -(-rows // block), -(-cols // block)
    padded = F.pad(w.float(), (0, nc * block - cols, 0, nr * block - rows)).view(nr, block, nc, block)
    scale = (padded.abs().amax(dim=(1, 3)) / torch.finfo(torch.float8_e4m3fn).max).clamp(min=1e-12)
    q = (padded / scale[:, None, :, None]).to(torch.float8_e4m3fn).view(nr * block, nc * block)
    return q[:rows, :cols].contiguous(), scale


def test_block_fp8_checkpoint_with_indexer_weights_loads(tmp_path, sparse_topk):
    """Every linear weight (the indexer's wq_b, wk, weights_proj included) in block FP8: the loaded
    model equals transformers run on the same FP8-rounded weights."""
    src = sparse_topk.folder
    rounded, fp8 = {}, {}
    for name, t in load_file(str(src / "model.safetensors")).items():
        if t.dim() == 2 and "embed" not in name and "lm_head" not in name and not name.endswith("gate.weight"):
            q, scale_inv = quantize_block_fp8(t)
            fp8[name], fp8[name + "_scale_inv"] = q, scale_inv
            rounded[name] = (
                q.float() * scale_inv.repeat_interleave(128, 0)[: t.size(0)].repeat_interleave(128, 1)[:, : t.size(1)]
            )
        else:
            fp8[name] = rounded[name] = t
    assert fp8["model.layers.1.self_attn.indexer.wq_b.weight"].dtype == torch.float8_e4m3fn
    config = json.loads((src / "config.json").read_text())
    for folder, tensors, extra in (
        (
            tmp_path / "fp8",
            fp8,
            {
                "quantization_config": {
                    "quant_method": "fp8",
                    "fmt": "e4m3",
                    "activation_scheme": "dynamic",
                    "weight_block_size": [128, 128],
                }
            },
        ),
        (tmp_path / "rounded", rounded, {}),
    ):
        folder.mkdir()
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**config, **extra}))
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "rounded"), dtype=torch.float32)
    ref = hf_logits(reference.eval(), PROMPTS[0])
    assert (ref - hf_logits(sparse_topk.hf_model, PROMPTS[0])).abs().max().item() > 1e-3  # rounding is visible
    llm = make_llm(tmp_path / "fp8")
    assert (llm.engine.runner.prefill_logits(PROMPTS[0]) - ref).abs().max().item() < 1e-4
