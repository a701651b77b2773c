"""DeepSeek-V3.2: DeepSeek-V3 with DeepSeek Sparse Attention (DSA) in every layer.

A lightning indexer per layer picks the `index_topk` (2048 in the release) most relevant cached
tokens for each query, and MLA attends only to those; MoE, MLA projections, rope, MTP layout and
the FP8 checkpoint format are V3's. See seekd/layers/indexer.py and seekd/layers/sparse_mla.py.
"""

from __future__ import annotations

from seekd.layers.indexer import LightningIndexer
from seekd.layers.rotary import RotaryEmbedding
from seekd.layers.sparse_mla import SparseMLAAttention
from seekd.models.deepseek_v2 import DeepseekV3ForCausalLM, mla_arguments
from seekd.models.hf_config import HFConfig


def build_sparse_mla(config: HFConfig, rotary: RotaryEmbedding) -> SparseMLAAttention:
    if config.get("q_lora_rank") is None:
        raise ValueError("DeepSeek-V3.2 config.json needs q_lora_rank: the indexer reads the compressed query")
    indexer = LightningIndexer(
        hidden_size=config.hidden_size,
        q_lora_rank=config.q_lora_rank,
        n_heads=config.index_n_heads,
        head_dim=config.index_head_dim,
        rope_dim=config.qk_rope_head_dim,
        topk=config.index_topk,
        rotary_emb=rotary,
    )
    return SparseMLAAttention(**mla_arguments(config, rotary), indexer=indexer)


class DeepseekV32ForCausalLM(DeepseekV3ForCausalLM):
    build_attention = staticmethod(build_sparse_mla)
