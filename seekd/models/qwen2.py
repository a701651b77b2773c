"""Qwen2 (DeepSeek-R1-Distill-Qwen-1.5B/7B/14B/32B): Llama's shape with biased q/k/v projections."""

from __future__ import annotations

from seekd.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    qkv_bias = True
