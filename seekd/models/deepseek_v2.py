"""DeepSeek-V2 / V3 / R1: Multi-head Latent Attention + DeepSeekMoE (fine-grained routed experts and
shared experts; the first `first_k_dense_replace` layers keep a dense MLP).

V3 differs from V2 only in configuration: sigmoid scores with noaux_tc routing (bias-corrected
group-limited top-k), q_lora_rank set, YaRN to 128k context. The same code runs both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from seekd.distributed import is_first_stage, is_last_stage
from seekd.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from seekd.layers.forward_context import ForwardContext
from seekd.layers.mla import MLAAttention
from seekd.layers.moe import RoutedExperts, SparseMoE, TopKRouter, expert_weight_target
from seekd.layers.norms import RMSNorm
from seekd.layers.pipeline import StageSpecs, StageTensors, held, on_stage, stage_layers
from seekd.layers.rotary import RotaryEmbedding, get_rope, rope_parameters, yarn_softmax_scale
from seekd.models.hf_config import HFConfig
from seekd.models.llama import LlamaMLP
from seekd.models.weights import load_named_weights


def build_rope(config: HFConfig) -> RotaryEmbedding:
    """One table for all layers: at V3's 163,840 positions a per-layer copy would cost 2.5 GB."""
    rope_dim = config.qk_rope_head_dim
    return get_rope(
        rope_dim,
        rope_dim,
        config.max_position_embeddings,
        config,
        interleaved=bool(config.get("rope_interleave", True)),
    )


def mla_arguments(config: HFConfig, rotary: RotaryEmbedding) -> dict[str, Any]:
    """MLAAttention's constructor arguments from config.json (shared with V3.2's sparse MLA)."""
    rope_dim = config.qk_rope_head_dim
    qk_head_dim = config.qk_nope_head_dim + rope_dim
    _, scaling = rope_parameters(config)
    return dict(
        hidden_size=config.hidden_size,
        num_heads=config.num_attention_heads,
        q_lora_rank=config.get("q_lora_rank"),
        kv_lora_rank=config.kv_lora_rank,
        qk_nope_head_dim=config.qk_nope_head_dim,
        qk_rope_head_dim=rope_dim,
        v_head_dim=config.v_head_dim,
        rotary_emb=rotary,
        scale=yarn_softmax_scale(qk_head_dim**-0.5, scaling),
        bias=bool(config.get("attention_bias", False)),
    )


def build_mla(config: HFConfig, rotary: RotaryEmbedding) -> MLAAttention:
    return MLAAttention(**mla_arguments(config, rotary))


def build_moe(config: HFConfig, scoring_func: str, topk_method: str, layer_idx: int) -> SparseMoE:
    """`scoring_func`/`topk_method` are the architecture's defaults, used when config.json omits them;
    `layer_idx` names the layer's routed experts in an ExpertPlacement."""
    gate = TopKRouter(
        config.hidden_size,
        config.n_routed_experts,
        config.num_experts_per_tok,
        scoring_func=config.get("scoring_func", scoring_func),
        topk_method=config.get("topk_method", topk_method),
        n_group=int(config.get("n_group", 1)),
        topk_group=int(config.get("topk_group", 1)),
        norm_topk_prob=bool(config.get("norm_topk_prob", False)),
        routed_scaling_factor=float(config.get("routed_scaling_factor", 1.0)),
    )
    experts = RoutedExperts(config.n_routed_experts, config.hidden_size, config.moe_intermediate_size, layer=layer_idx)
    n_shared = int(config.get("n_shared_experts", 0))
    shared = LlamaMLP(config.hidden_size, config.moe_intermediate_size * n_shared) if n_shared else None
    return SparseMoE(gate, experts, shared)


def is_moe_layer(config: HFConfig, layer_idx: int) -> bool:
    """DeepSeek's configs name the first dense layers (`first_k_dense_replace`); transformers'
    DeepSeek-OCR 2 config lists each layer's kind (`mlp_layer_types`: dense or sparse)."""
    if kinds := config.get("mlp_layer_types"):
        return kinds[layer_idx] == "sparse"
    return (
        config.get("n_routed_experts", 0) > 0
        and layer_idx >= config.get("first_k_dense_replace", 0)
        and layer_idx % config.get("moe_layer_freq", 1) == 0
    )


AttentionBuilder = Callable[[HFConfig, RotaryEmbedding], nn.Module]


class DeepseekV2DecoderLayer(nn.Module):
    def __init__(
        self,
        config: HFConfig,
        layer_idx: int,
        rotary: RotaryEmbedding,
        scoring_func: str,
        topk_method: str,
        build_attention: AttentionBuilder = build_mla,
    ) -> None:
        super().__init__()
        self.self_attn = build_attention(config, rotary)
        if is_moe_layer(config, layer_idx):
            self.mlp = build_moe(config, scoring_func, topk_method, layer_idx)
        else:
            self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, ctx: ForwardContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, ctx)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class DeepseekV2Model(nn.Module):
    """The decoder stack, or one pipeline stage of it: the first stage embeds, the last normalizes;
    between stages travel the hidden states and the residual stream."""

    def __init__(
        self,
        config: HFConfig,
        scoring_func: str,
        topk_method: str,
        build_attention: AttentionBuilder = build_mla,
        build_rotary: Callable[[HFConfig], RotaryEmbedding] = build_rope,
    ) -> None:
        """`build_attention` and `build_rotary`: MLA with its rope part by default; DeepSeek-OCR 2's
        language model keeps V2's MoE with plain multi-head attention."""
        super().__init__()
        self.is_first, self.is_last = is_first_stage(), is_last_stage()
        self.embed_tokens = on_stage(
            self.is_first, lambda: VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        )
        rotary = build_rotary(config)
        self.layers, self.stage = stage_layers(
            config.num_hidden_layers,
            lambda i: DeepseekV2DecoderLayer(config, i, rotary, scoring_func, topk_method, build_attention),
        )
        self.norm = on_stage(self.is_last, lambda: RMSNorm(config.hidden_size, config.rms_norm_eps))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: ForwardContext,
        intermediate: StageTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor | StageTensors:
        """The final hidden states, or (before the last stage) what the next stage continues from.
        `inputs_embeds` replaces the token embeddings (a vision model's merged image features)."""
        if intermediate is None:
            x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
            residual = None
        else:
            x, residual = intermediate["hidden"], intermediate["residual"]
        for i in self.stage:
            x, residual = self.layers[i](positions, x, residual, ctx)
        if not self.is_last:
            return {"hidden": x, "residual": residual}
        x, _ = self.norm(x, residual)
        return x


class DeepseekV2ForCausalLM(nn.Module):
    packed_modules_mapping = {"gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
    # used when config.json does not name them (transformers' V2/V3 configs may not)
    default_scoring_func = "softmax"
    default_topk_method = "greedy"
    build_attention: AttentionBuilder = staticmethod(build_mla)

    def __init__(self, config: HFConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DeepseekV2Model(config, self.default_scoring_func, self.default_topk_method, self.build_attention)
        self.lm_head = on_stage(is_last_stage(), lambda: ParallelLMHead(config.vocab_size, config.hidden_size))
        self.tie_word_embeddings = bool(config.get("tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: ForwardContext,
        intermediate: StageTensors | None = None,
    ) -> torch.Tensor | StageTensors:
        return self.model(input_ids, positions, ctx, intermediate)

    def pipeline_specs(self, num_tokens: int, dtype: torch.dtype) -> StageSpecs:
        """What one stage hands the next: name -> (shape, dtype)."""
        shape = (num_tokens, self.config.hidden_size)
        return {"hidden": (shape, dtype), "residual": (shape, dtype)}

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def attention_layers(self) -> list[MLAAttention]:
        return [held(layer).self_attn for layer in self.model.layers]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip = ("rotary_emb.inv_freq",)
        if self.tie_word_embeddings:
            skip = (*skip, "lm_head.weight")
        return load_named_weights(self, weights, self.packed_modules_mapping, skip, remap=expert_weight_target)


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    default_scoring_func = "sigmoid"
    default_topk_method = "noaux_tc"
