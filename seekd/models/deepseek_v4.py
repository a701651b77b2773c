"""DeepSeek-V4 (Flash / Pro): shared-KV attention with a per-layer schedule of sliding-window, compressed
sparse (CSA) and heavily compressed (HCA) attention; hyper-connection residual streams (mHC); MoE
with sqrt(softplus) routing, hash-routed first layers and clipped SwiGLU experts.

Module and parameter names follow DeepSeek's checkpoints (embed, layers.N.attn.wq_a, ffn.experts.E.w1,
hc_attn_fn, head, ...); transformers saves V4 under those names too. The multi-token-prediction
module (`mtp.*`) is not run by plain decoding and is skipped on load.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from seekd.distributed import is_first_stage, is_last_stage
from seekd.layers.compressed_attention import CompressedAttention
from seekd.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from seekd.layers.forward_context import ForwardContext
from seekd.layers.hyper_connection import HyperConnection, HyperHead
from seekd.layers.moe import HashRouter, RoutedExperts, TopKRouter, expert_weight_target, swiglu
from seekd.layers.norms import RMSNorm
from seekd.layers.pipeline import StageSpecs, StageTensors, held, on_stage, stage_layers
from seekd.layers.rotary import RotaryEmbedding
from seekd.layers.token_compression import CompressedIndexer, Compressor
from seekd.models.hf_config import HFConfig
from seekd.models.llama import LlamaMLP
from seekd.models.weights import load_named_weights

logger = logging.getLogger(__name__)

SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
DEFAULT_COMPRESS_RATES = {CSA: 4, HCA: 128}


def compress_rates(config: HFConfig) -> dict[str, int]:
    rates = dict(DEFAULT_COMPRESS_RATES)
    rates.update(config.get("compress_rates", {}))
    rates[CSA] = int(config.get("compress_rate_csa", rates[CSA]))
    rates[HCA] = int(config.get("compress_rate_hca", rates[HCA]))
    return rates


def layer_types(config: HFConfig) -> list[str]:
    """transformers' `layer_types`, or DeepSeek's per-layer `compress_ratios` (0 = sliding only)."""
    if config.get("layer_types"):
        return list(config.layer_types)
    ratios = config.get("compress_ratios")
    if ratios is None:
        raise ValueError("DeepSeek-V4 config.json needs layer_types or compress_ratios (the attention schedule)")
    csa_rate = compress_rates(config)[CSA]
    return [SLIDING if r == 0 else CSA if r == csa_rate else HCA for r in ratios[: config.num_hidden_layers]]


def mlp_layer_types(config: HFConfig) -> list[str]:
    if config.get("mlp_layer_types"):
        return list(config.mlp_layer_types)
    n, n_hash = config.num_hidden_layers, int(config.get("num_hash_layers", 3))
    return ["hash_moe"] * min(n, n_hash) + ["moe"] * max(0, n - n_hash)


def rope_dim(config: HFConfig) -> int:
    if config.get("qk_rope_head_dim"):
        return int(config.qk_rope_head_dim)
    return int(config.head_dim * float(config.get("partial_rotary_factor", 64 / 512)))


def build_ropes(config: HFConfig) -> dict[str, RotaryEmbedding]:
    """ "main" (plain rope, sliding layers) and "compress" (compress_rope_theta, YaRN when configured;
    CSA/HCA layers, their compressors and indexer). One table each, shared by all layers."""
    params = config.get("rope_parameters") or {}
    if not isinstance(params.get("main"), dict):
        scaling = {k: v for k, v in (params or config.get("rope_scaling") or {}).items() if k != "rope_theta"}
        params = {
            "main": {"rope_theta": config.get("rope_theta", 10000.0)},
            "compress": {**scaling, "rope_theta": config.get("compress_rope_theta", 160000.0)},
        }
    dim, ropes = rope_dim(config), {}
    for name in ("main", "compress"):
        p = dict(params[name])
        kind = p.get("rope_type", p.get("type", "default"))
        scaling = None if kind == "default" else {**p, "rope_type": kind}
        ropes[name] = RotaryEmbedding(dim, dim, config.max_position_embeddings, float(p["rope_theta"]), scaling)
    return ropes


def build_attention(config: HFConfig, kind: str, ropes: dict[str, RotaryEmbedding]) -> CompressedAttention:
    rotary = ropes["main" if kind == SLIDING else "compress"]
    compressor = indexer = None
    eps, hidden = config.rms_norm_eps, config.hidden_size
    if kind != SLIDING:
        rate = compress_rates(config)[kind]
        compressor = Compressor(hidden, config.head_dim, rate, kind == CSA, eps, rotary)
    if kind == CSA:
        index_compressor = Compressor(hidden, config.index_head_dim, rate, True, eps, rotary)
        indexer = CompressedIndexer(
            hidden, config.q_lora_rank, config.index_n_heads, config.index_head_dim, config.index_topk, index_compressor
        )
    return CompressedAttention(
        hidden,
        config.num_attention_heads,
        config.head_dim,
        config.q_lora_rank,
        config.o_groups,
        config.o_lora_rank,
        config.sliding_window,
        eps,
        rotary,
        compressor,
        indexer,
    )


class ClippedSwiGLUMLP(LlamaMLP):
    """The shared expert: a SwiGLU MLP with V4's swiglu_limit clipping."""

    def __init__(self, hidden_size: int, intermediate_size: int, swiglu_limit: float | None) -> None:
        super().__init__(hidden_size, intermediate_size)
        self.swiglu_limit = swiglu_limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(swiglu(gate, up, self.swiglu_limit))


class V4MoE(nn.Module):
    """Routed experts (hash- or score-routed) plus the shared expert."""

    def __init__(self, config: HFConfig, hashed: bool, layer_idx: int) -> None:
        super().__init__()
        hidden, n_experts, top_k = config.hidden_size, config.n_routed_experts, config.num_experts_per_tok
        scoring = config.get("scoring_func", "sqrtsoftplus")
        scaling = float(config.get("routed_scaling_factor", 1.0))
        limit = config.get("swiglu_limit")
        self.hashed = hashed
        if hashed:
            self.gate = HashRouter(
                hidden, n_experts, top_k, config.vocab_size, scoring_func=scoring, routed_scaling_factor=scaling
            )
        else:  # bias-corrected choice over all experts (one group), weights from the unbiased scores
            self.gate = TopKRouter(
                hidden,
                n_experts,
                top_k,
                scoring_func=scoring,
                topk_method="noaux_tc",
                norm_topk_prob=True,
                routed_scaling_factor=scaling,
            )
        self.experts = RoutedExperts(n_experts, hidden, config.moe_intermediate_size, limit, layer=layer_idx)
        n_shared = int(config.get("n_shared_experts", 1))
        self.shared_experts = ClippedSwiGLUMLP(hidden, config.moe_intermediate_size * n_shared, limit)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        weights, ids = self.gate(x, input_ids) if self.hashed else self.gate(x)
        return self.experts(x, weights, ids) + self.shared_experts(x)


class DeepseekV4DecoderLayer(nn.Module):
    def __init__(
        self, config: HFConfig, layer_idx: int, attn_kind: str, mlp_kind: str, ropes: dict[str, RotaryEmbedding]
    ) -> None:
        super().__init__()
        hidden, eps = config.hidden_size, config.rms_norm_eps
        hc = (
            hidden,
            int(config.get("hc_mult", 4)),
            int(config.get("hc_sinkhorn_iters", 20)),
            float(config.get("hc_eps", 1e-6)),
            eps,
        )
        self.attn = build_attention(config, attn_kind, ropes)
        self.ffn = V4MoE(config, mlp_kind == "hash_moe", layer_idx)
        self.attn_norm = RMSNorm(hidden, eps)
        self.ffn_norm = RMSNorm(hidden, eps)
        self.hc_attn = HyperConnection(*hc)
        self.hc_ffn = HyperConnection(*hc)

    def forward(
        self, positions: torch.Tensor, input_ids: torch.Tensor, streams: torch.Tensor, ctx: ForwardContext
    ) -> torch.Tensor:
        """streams: [T, hc_mult, hidden] in and out."""
        x, post, comb = self.hc_attn(streams)
        streams = HyperConnection.merge(streams, self.attn(positions, self.attn_norm(x), ctx), post, comb)
        x, post, comb = self.hc_ffn(streams)
        return HyperConnection.merge(streams, self.ffn(self.ffn_norm(x), input_ids), post, comb)


class DeepseekV4ForCausalLM(nn.Module):
    """The model, or one pipeline stage of it: the first stage embeds, the last collapses the streams
    and computes the logits; between stages travel the hyper-connection streams."""

    def __init__(self, config: HFConfig) -> None:
        super().__init__()
        self.config = config
        attn_kinds, mlp_kinds = layer_types(config), mlp_layer_types(config)
        ropes = build_ropes(config)
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.hc_mult = int(config.get("hc_mult", 4))
        self.is_first, self.is_last = is_first_stage(), is_last_stage()
        self.embed = on_stage(self.is_first, lambda: VocabParallelEmbedding(config.vocab_size, hidden))
        self.layers, self.stage = stage_layers(
            config.num_hidden_layers, lambda i: DeepseekV4DecoderLayer(config, i, attn_kinds[i], mlp_kinds[i], ropes)
        )
        self.hc_head = on_stage(
            self.is_last, lambda: HyperHead(hidden, self.hc_mult, float(config.get("hc_eps", 1e-6)), eps)
        )
        self.norm = on_stage(self.is_last, lambda: RMSNorm(hidden, eps))
        self.head = on_stage(self.is_last, lambda: ParallelLMHead(config.vocab_size, hidden))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: ForwardContext,
        intermediate: StageTensors | None = None,
    ) -> torch.Tensor | StageTensors:
        if intermediate is None:
            x = self.embed(input_ids)
            streams = x.unsqueeze(1).expand(-1, self.hc_mult, -1).contiguous()
        else:
            streams = intermediate["streams"]
        for i in self.stage:
            streams = self.layers[i](positions, input_ids, streams, ctx)
        if not self.is_last:
            return {"streams": streams}
        return self.norm(self.hc_head(streams))

    def pipeline_specs(self, num_tokens: int, dtype: torch.dtype) -> StageSpecs:
        """What one stage hands the next: name -> (shape, dtype)."""
        return {"streams": ((num_tokens, self.hc_mult, self.config.hidden_size), dtype)}

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head.compute_logits(hidden)

    def attention_layers(self) -> list[CompressedAttention]:
        return [held(layer).attn for layer in self.layers]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_named_weights(self, without_mtp(weights), {}, remap=v4_weight_target)


_RENAMES = (
    (re.compile(r"^model\."), ""),
    (re.compile(r"^embed_tokens\."), "embed."),
    (re.compile(r"^hc_head[._]hc_(fn|base|scale)$"), r"hc_head.\1"),
    (re.compile(r"^hc_head_(fn|base|scale)$"), r"hc_head.\1"),
    (re.compile(r"\.hc_(attn|ffn)_(fn|base|scale)$"), r".hc_\1.\2"),
    (re.compile(r"\.gate\.bias$"), ".gate.e_score_correction_bias"),
)
_EXPERT_W = re.compile(r"^(.*\.experts\.\d+)\.(w[123])\.weight$")
_SHARED_W = re.compile(r"^(.*\.shared_experts)\.(w[123])\.weight$")
_W_NAMES = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def v4_weight_target(name: str) -> tuple[str, Any]:
    """Checkpoint name (DeepSeek's, with or without transformers' `model.` prefix) -> (parameter, shard)."""
    for pattern, replacement in _RENAMES:
        name = pattern.sub(replacement, name)
    if m := _EXPERT_W.match(name):
        return expert_weight_target(f"{m[1]}.{_W_NAMES[m[2]]}.weight")
    if m := _SHARED_W.match(name):
        if m[2] == "w2":
            return f"{m[1]}.down_proj.weight", None
        return f"{m[1]}.gate_up_proj.weight", 0 if m[2] == "w1" else 1
    return expert_weight_target(name) or (name, None)


def without_mtp(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    skipped = 0
    for name, tensor in weights:
        if re.match(r"^(model\.)?mtp\.", name):
            skipped += 1
            continue
        yield name, tensor
    if skipped:
        logger.info("skipped %d tensors of the multi-token-prediction module", skipped)
