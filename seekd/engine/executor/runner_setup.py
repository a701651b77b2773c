"""Builds a ModelRunner with its KV cache bound: model, attention backend, cache sizing, graphs.

Every tensor-parallel rank runs this same code in the same order (it holds collectives: profiling
forwards and the agreement on the number of KV blocks); rank 0 then adds the scheduler on top.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from seekd.config import SeekdConfig
from seekd.distributed import all_reduce_min, pp_size, tp_size, world_size
from seekd.engine.model_runner import ModelRunner
from seekd.layers.attention import backend_name
from seekd.layers.expert_placement import ALL_ON_DEVICE, ExpertPlacement
from seekd.layers.quantization import QuantConfig
from seekd.models.demo import ensure_demo_model
from seekd.models.expert_placement import host_format_for, model_split, plan_expert_placement
from seekd.models.hf_config import HFConfig
from seekd.models.loader import load_model, resolve_dtype, resolve_quant_config
from seekd.models.memory_plan import fitting_advice, weight_budget, weight_bytes_per_gpu
from seekd.models.registry import kernel_choice

logger = logging.getLogger(__name__)


def resolve_model_folder(config: SeekdConfig) -> tuple[Path, str]:
    """(folder, load_format). No model means the random demo model."""
    if config.model.model is None:
        return ensure_demo_model(config.storage.path), "dummy"
    load_format = config.model.load_format
    return Path(config.model.model).expanduser(), "safetensors" if load_format == "auto" else load_format


def set_cpu_threads(requested: int | None, num_ranks: int) -> None:
    """Leave a core to the API server and the tokenizer: with every core busy in torch, small
    matmuls stall on contended threads and a 2-core machine runs at half speed. Tensor-parallel
    ranks on the CPU share the rest."""
    threads = requested or max(1, ((os.cpu_count() or 2) - 1) // num_ranks)
    torch.set_num_threads(threads)
    logger.info("CPU inference with %d torch threads", threads)


@dataclass
class LoadedRunner:
    runner: ModelRunner
    model_folder: Path
    hf_config: HFConfig
    dtype: torch.dtype
    max_model_len: int
    num_blocks: int


def resolve_expert_placement(
    config: SeekdConfig, hf_config: HFConfig, quant: QuantConfig, device: str, dtype: torch.dtype
) -> ExpertPlacement:
    """Which routed experts live in host memory (`--cpu-experts`, `--expert-placement`); `auto` fills
    the GPU's weight budget from the memory plan first."""
    dev = config.device
    if dev.cpu_experts == "0" and not dev.expert_placement:
        return ALL_ON_DEVICE
    if world_size() > 1:
        raise ValueError(
            "routed experts in host memory (--cpu-experts) run with one GPU: tensor- and pipeline-parallel size 1"
        )
    budget = None
    if device.startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        budget = weight_budget(total, config.cache.gpu_memory_utilization)
    return plan_expert_placement(
        model_split(hf_config, quant, tp_size(), dtype),
        cpu_experts=dev.cpu_experts,
        host_format=host_format_for(dev.cpu_expert_format, quant),
        placement_file=dev.expert_placement,
        routing_profile=dev.routing_profile,
        gpu_weight_budget=budget,
    )


def check_weights_fit(
    config: SeekdConfig,
    hf_config: HFConfig,
    quant: QuantConfig,
    device: str,
    dtype: torch.dtype,
    placement: ExpertPlacement = ALL_ON_DEVICE,
) -> None:
    """Refuse at once, with the precision and TP size that would fit, a model whose weights alone
    exceed the GPU: loading a 600 GB checkpoint only to fail at the end costs an hour."""
    if not device.startswith("cuda"):
        return
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    usable = config.cache.gpu_memory_utilization
    # pipeline stages hold about 1/pp of the layers each (the plan counts the whole stack)
    need = weight_bytes_per_gpu(hf_config, quant, tp_size(), dtype, placement) / pp_size()
    if need > total * usable:
        raise RuntimeError(
            f"the model does not fit: its weights need {need / 2**30:.1f} GiB per GPU at tensor-parallel size "
            f"{tp_size()} x pipeline {pp_size()} (linear {quant.linear}, experts {quant.experts}), and this GPU has "
            f"{total / 2**30:.1f} GiB x gpu_memory_utilization {usable}; "
            + fitting_advice(hf_config, total, usable)
            + "; MoE models can also keep routed experts in host RAM (--cpu-experts auto)"
        )


def load_runner(config: SeekdConfig, device: str, show_progress: bool) -> LoadedRunner:
    model_folder, load_format = resolve_model_folder(config)
    hf_config = HFConfig.from_folder(model_folder)
    dtype = resolve_dtype(config.model.dtype, hf_config, device)
    quant = resolve_quant_config(hf_config, config.model.quantization, config.model.fp8_gemm, device)
    placement = resolve_expert_placement(config, hf_config, quant, device, dtype)
    check_weights_fit(config, hf_config, quant, device, dtype, placement)
    backend = backend_name(config.model.attention_backend, device)
    kernels = kernel_choice(hf_config.architecture, backend, config.model.fused_kernels)
    model = load_model(
        model_folder,
        hf_config,
        device=device,
        dtype=dtype,
        load_format=load_format,
        seed=config.model.seed,
        show_progress=show_progress,
        quant=quant,
        kernels=kernels,
        placement=placement,
    )
    runner = ModelRunner(
        model,
        device,
        dtype,
        config.cache.block_size,
        hf_config.vocab_size,
        config.model.seed,
        kv_cache_dtype=config.cache.kv_cache_dtype,
    )
    runner.select_attention_backend(config.model.attention_backend, config.model.prefill_attention)
    if runner.attn_backend.name == "triton" and device.startswith("cuda") and config.device.batch1_gemv == "auto":
        runner.tune_batch1_gemv()
    max_model_len = min(config.model.max_model_len or hf_config.context_length, hf_config.context_length)
    num_blocks = num_kv_blocks(config, runner, device, max_model_len)
    runner.allocate_kv_cache(num_blocks)
    capacity = runner.kv_layout.max_tokens(num_blocks - 1, config.scheduler.max_num_batched_tokens)
    if capacity < max_model_len:
        logger.warning("KV cache holds %d tokens; capping the context length at that", capacity)
        max_model_len = capacity
    if device.startswith("cuda") and not config.device.enforce_eager:
        _capture_graphs(config, runner, max_model_len)
    return LoadedRunner(runner, model_folder, hf_config, dtype, max_model_len, num_blocks)


def _capture_graphs(config: SeekdConfig, runner: ModelRunner, max_model_len: int) -> None:
    blockers = runner.graph_blockers()
    if world_size() > 1:
        logger.info(
            "parallel ranks: decode runs eagerly (CUDA graphs holding NCCL collectives are not validated in seekd yet)"
        )
    elif runner.attn_backend.name != "triton":
        logger.info("decode CUDA graphs need the triton attention backend; running eagerly")
    elif blockers:
        logger.info("decode runs eagerly: %s read host-side step values that a graph would freeze", ", ".join(blockers))
    else:
        max_batch = min(config.scheduler.max_num_seqs, config.device.cuda_graph_max_batch)
        runner.capture_decode_graphs(max_batch, max_model_len)


def num_kv_blocks(config: SeekdConfig, runner: ModelRunner, device: str, max_model_len: int) -> int:
    """Blocks that fit the memory left for the KV cache: on a GPU, total * gpu_memory_utilization
    minus what is already used (weights) minus the peak of a profiled full-budget step. Tensor-parallel
    ranks take the smallest count of any rank: every rank binds the same block ids."""
    cache, sched = config.cache, config.scheduler
    if cache.num_kv_blocks is not None:
        return cache.num_kv_blocks
    per_block = runner.kv_bytes_per_block()
    layout = runner.kv_layout
    blocks_per_seq = layout.blocks_for_tokens(max_model_len, sched.max_num_batched_tokens)
    if device.startswith("cuda"):
        cuda = torch.device(device)
        activations = runner.profile_activation_bytes(
            min(sched.max_num_batched_tokens, max_model_len), min(sched.max_num_seqs, 256)
        )
        free, total = torch.cuda.mem_get_info(cuda)
        used = total - free
        graphs_reserve = 0 if config.device.enforce_eager or world_size() > 1 else 2**29
        budget = total * cache.gpu_memory_utilization - used - activations - graphs_reserve
        detail = (
            f"{total / 2**30:.1f} GiB on the GPU x gpu_memory_utilization {cache.gpu_memory_utilization} "
            f"- {used / 2**30:.1f} GiB in use (weights) - {activations / 2**30:.2f} GiB activations"
        )
    else:
        budget = cache.cpu_kv_cache_gib * 2**30
        detail = f"cpu_kv_cache_gib {cache.cpu_kv_cache_gib}"
    own_blocks = min(max(int(budget // per_block), 0), sched.max_num_seqs * blocks_per_seq + 1)
    num_blocks = all_reduce_min(own_blocks, runner.device)
    if num_blocks < own_blocks:
        detail += f"; another tensor-parallel rank fits only {num_blocks} blocks"
    min_tokens = min(max_model_len, 1024)
    min_blocks = layout.blocks_for_tokens(min_tokens, sched.max_num_batched_tokens)
    if num_blocks - 1 < min_blocks:
        raise RuntimeError(
            f"the model does not fit: {detail} leaves {max(budget, 0) / 2**30:.2f} GiB for the KV cache, "
            f"and {min_tokens} tokens of context need {min_blocks * per_block / 2**30:.2f}"
            " GiB. Try a shorter --max-model-len, a smaller --max-num-batched-tokens, a higher "
            "--gpu-memory-utilization, --kv-cache-dtype fp8, --quantization fp8 (bf16 checkpoints), or more "
            "GPUs (tensor parallelism)"
        )
    logger.info("KV cache budget: %s -> %d blocks", detail, num_blocks)
    return num_blocks
