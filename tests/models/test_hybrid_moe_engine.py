"""Whole tiny DeepSeek engines with routed experts in host memory (--cpu-experts) against the same
engine with every expert on the device: identical greedy tokens in float32. On this CPU both sides of
the split run on the CPU, so this pins the placement, the loader's routing of expert tensors and the
per-step split; on a GPU (marked gpu) the device side is CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from decode_agreement import greedy_sequences
from models.test_deepseek_checkpoints import write_fp8_checkpoint
from models.test_deepseek_v4 import save_tiny_v4
from models.test_deepseek_v4_checkpoint import write_v4_checkpoint

from seekd import LLM
from seekd.layers.moe import RoutedExperts

NUM_DECODE = 12


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def engine(folder: Path, data: Path, **overrides) -> LLM:
    base = dict(data_dir=str(data), num_kv_blocks=160, block_size=8, max_model_len=256, show_progress=False)
    return LLM(str(folder), **{**base, "enforce_eager": True, **overrides})


def prompts(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(2, vocab, (n,), generator=gen).tolist() for n in (5, 17, 30)]


def hybrid_layers(llm: LLM) -> list[RoutedExperts]:
    return [m for m in llm.engine.runner.model.modules() if isinstance(m, RoutedExperts) and m.host is not None]


def assert_same_greedy_tokens(folder: Path, tmp_path: Path, vocab: int, cpu_experts: str, **overrides) -> LLM:
    reference = engine(folder, tmp_path / "d1", **overrides)
    hybrid = engine(folder, tmp_path / "d2", cpu_experts=cpu_experts, cpu_expert_format="checkpoint", **overrides)
    layers = hybrid_layers(hybrid)
    assert layers and all(m.host.w13_weight.device.type == "cpu" for m in layers)
    want = greedy_sequences(reference, prompts(vocab), NUM_DECODE)
    assert greedy_sequences(hybrid, prompts(vocab), NUM_DECODE) == want
    return hybrid


def test_v3_with_three_of_eight_experts_on_the_cpu_gives_identical_greedy_tokens(tmp_path, tiny_deepseek):
    hf_model = tiny_deepseek("v3", tmp_path / "v3")
    hybrid = assert_same_greedy_tokens(tmp_path / "v3", tmp_path, hf_model.config.vocab_size, "3")
    assert all(m.host.w13_weight.shape[0] == 3 and m.w13_weight.shape[0] == 5 for m in hybrid_layers(hybrid))


def test_v3_block_fp8_with_host_experts_in_fp8_gives_identical_greedy_tokens(tmp_path, tiny_deepseek):
    hf_model = tiny_deepseek("v3_aligned", tmp_path / "bf16")
    write_fp8_checkpoint(tmp_path / "bf16", tmp_path / "fp8", hf_model.config.num_hidden_layers)
    hybrid = assert_same_greedy_tokens(tmp_path / "fp8", tmp_path, hf_model.config.vocab_size, "6")
    assert {m.host.format for m in hybrid_layers(hybrid)} == {"fp8_block"}


def test_v4_fp4_experts_half_on_the_cpu_give_identical_greedy_tokens(tmp_path):
    save_tiny_v4(tmp_path / "full")
    write_v4_checkpoint(tmp_path / "full", tmp_path / "fp4")
    hybrid = assert_same_greedy_tokens(tmp_path / "fp4", tmp_path, 384, "4")
    assert {m.host.format for m in hybrid_layers(hybrid)} == {"fp4"}


@pytest.mark.gpu
def test_gpu_v3_hybrid_engine_matches_the_all_gpu_engine_and_keeps_experts_off_the_gpu(tmp_path, tiny_deepseek):
    """The real split on CUDA, with the triton backend and fused kernels: identical greedy tokens in
    float32, host experts in pinned host memory, and the GPU holding fewer expert bytes."""
    hf_model = tiny_deepseek("v3", tmp_path / "v3")
    overrides = dict(dtype="float32", device="cuda")
    hybrid = assert_same_greedy_tokens(tmp_path / "v3", tmp_path, hf_model.config.vocab_size, "5", **overrides)
    for layer in hybrid_layers(hybrid):
        assert layer.w13_weight.is_cuda and layer.host.w13_weight.is_pinned()
