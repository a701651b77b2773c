"""Checks a parallel layout (tensor x pipeline ranks, experts sliced or whole) against the model and
the machine before any worker starts.

The layers split attention heads, MLP and expert intermediate sizes evenly across the tensor-parallel
ranks (with expert parallelism the routed experts are not sliced but dealt out whole, so their count
must divide instead), and pipeline stages need a layer each. A bad size fails here with the sizes
that would work, not deep inside a layer constructor on one rank while the others wait for it.
"""

from __future__ import annotations

import logging

from seekd.config import ParallelConfig
from seekd.models.hf_config import HFConfig

logger = logging.getLogger(__name__)

# architectures whose every layer is tensor-parallel aware and tested split across ranks (V4 and
# V3.2's indexer keep their attention projections replicated: each rank computes all of it)
TP_ARCHITECTURES = (
    "Qwen2ForCausalLM",
    "LlamaForCausalLM",
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
    "DeepseekV32ForCausalLM",
    "DeepseekV4ForCausalLM",
)


# architectures whose models run one pipeline stage at a time (their forward takes and hands over
# the stream between stages)
PP_ARCHITECTURES = (
    "DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM",
    "DeepseekV32ForCausalLM",
    "DeepseekV4ForCausalLM",
)


def split_sizes(hf_config: HFConfig, expert_parallel: bool = False) -> dict[str, int]:
    """The config sizes that the tensor-parallel layers divide by the rank count (with expert
    parallelism: the number of routed experts instead of their intermediate size)."""
    sizes = {"num_attention_heads": int(hf_config.num_attention_heads)}
    if hf_config.get("intermediate_size"):
        sizes["intermediate_size"] = int(hf_config.intermediate_size)
    if hf_config.get("n_routed_experts"):
        moe = int(hf_config.moe_intermediate_size)
        if expert_parallel:
            sizes["n_routed_experts"] = int(hf_config.n_routed_experts)
        else:
            sizes["moe_intermediate_size"] = moe
        shared = int(hf_config.get("n_shared_experts") or 0)
        if shared:
            sizes["moe_intermediate_size x n_shared_experts"] = moe * shared
    return sizes


def kv_heads_fit(num_kv_heads: int, tp: int) -> bool:
    """KV heads split evenly, or (fewer heads than ranks) each head is replicated on tp/kv ranks."""
    return num_kv_heads % tp == 0 if num_kv_heads >= tp else tp % num_kv_heads == 0


def valid_tp_sizes(hf_config: HFConfig, limit: int = 16, expert_parallel: bool = False) -> list[int]:
    return [n for n in range(1, limit + 1) if not tp_problems(hf_config, n, expert_parallel)]


def tp_problems(hf_config: HFConfig, tp: int, expert_parallel: bool = False) -> list[str]:
    sizes = split_sizes(hf_config, expert_parallel)
    problems = [f"{name}={size}" for name, size in sizes.items() if size % tp]
    uses_kv_heads = not hf_config.get("kv_lora_rank")  # MLA caches one latent, replicated on every rank
    num_kv_heads = int(hf_config.get("num_key_value_heads") or hf_config.num_attention_heads)
    if uses_kv_heads and not kv_heads_fit(num_kv_heads, tp):
        problems.append(f"num_key_value_heads={num_kv_heads}")
    return problems


def check_tensor_parallel(
    hf_config: HFConfig, tp: int, device: str, visible_gpus: int, expert_parallel: bool = False
) -> None:
    """Raise ValueError saying what does not fit `tp` ranks and what would."""
    if tp == 1:
        return
    arch = hf_config.architecture
    if arch not in TP_ARCHITECTURES:
        raise ValueError(
            f"tensor_parallel_size={tp}: {arch} does not run tensor-parallel yet (supported: "
            f"{', '.join(TP_ARCHITECTURES)}); use tensor_parallel_size=1"
        )
    problems = tp_problems(hf_config, tp, expert_parallel)
    if problems:
        raise ValueError(
            f"tensor_parallel_size={tp} does not divide this model's {', '.join(problems)}; "
            f"sizes that work: {', '.join(map(str, valid_tp_sizes(hf_config, expert_parallel=expert_parallel)))}"
        )
    check_devices(tp, device, visible_gpus)


def check_parallel(hf_config: HFConfig, parallel: ParallelConfig, device: str, visible_gpus: int) -> None:
    """The whole layout: tensor-parallel sizes, pipeline stages, expert parallelism, and a GPU per rank."""
    tp, pp, ep = parallel.tensor_parallel_size, parallel.pipeline_parallel_size, parallel.enable_expert_parallel
    if ep and not hf_config.get("n_routed_experts"):
        raise ValueError(f"enable_expert_parallel: {hf_config.architecture} has no routed experts to place")
    check_tensor_parallel(hf_config, tp, device, visible_gpus, expert_parallel=ep)
    if pp > 1:
        arch, layers = hf_config.architecture, int(hf_config.num_hidden_layers)
        if arch not in PP_ARCHITECTURES:
            raise ValueError(
                f"pipeline_parallel_size={pp}: {arch} does not run in pipeline stages yet (supported: "
                f"{', '.join(PP_ARCHITECTURES)}); use pipeline_parallel_size=1"
            )
        if pp > layers:
            raise ValueError(f"pipeline_parallel_size={pp} is more stages than this model's {layers} layers")
        if hf_config.get("tie_word_embeddings"):
            raise ValueError("pipeline stages need separate input and output embeddings (tie_word_embeddings)")
    check_devices(parallel.world_size, device, visible_gpus)


def check_devices(ranks: int, device: str, visible_gpus: int) -> None:
    if ranks == 1:
        return
    if device.startswith("cuda"):
        first = int(device.partition(":")[2] or 0)
        if first + ranks > visible_gpus:
            raise ValueError(
                f"{ranks} parallel ranks from {device} take one GPU each, which needs GPUs "
                f"{first}..{first + ranks - 1}, but {visible_gpus} GPU(s) are visible (check CUDA_VISIBLE_DEVICES)"
            )
    elif device != "cpu":
        raise ValueError(f"parallel ranks run on cuda or cpu devices, not {device!r}")


def rank_device(device: str, rank: int) -> str:
    """Rank r uses the r-th GPU counted from the configured one (cuda -> cuda:0)."""
    if not device.startswith("cuda"):
        return device
    return f"cuda:{int(device.partition(':')[2] or 0) + rank}"
