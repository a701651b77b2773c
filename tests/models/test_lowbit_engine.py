"""Whole tiny DeepSeek models serving their checkpoint's low-bit weights as they ship (block FP8 for
V3 and V3.2, FP4 experts + FP8 for V4) against the same engine with the checkpoint dequantized on load
(--quantization none, the reference): next-token distributions over 2,000 teacher-forced decode
positions. On the CPU the low-bit layers dequantize per call (the torch reference of each kernel), so
they must agree to rounding; on a GPU they run the Triton kernels (W8A8 on sm_89+), held to
top-1 >= 99 % and mean KL <= 1e-3 as the low-bit issue asks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from decode_agreement import agreement, decode_logits, greedy_sequences
from models.test_deepseek_checkpoints import write_fp8_checkpoint
from models.test_deepseek_v4 import save_tiny_v4
from models.test_deepseek_v4_checkpoint import write_v4_checkpoint
from models.test_deepseek_v32 import save_tiny_v32

from seekd import LLM

NUM_PROMPTS, NUM_DECODE = 8, 250  # 2,000 decode positions
pytestmark = pytest.mark.triton  # on a GPU the low-bit layers run the Triton kernels


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: on the shared 2-core machines a second OpenMP thread makes each one far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def engine(folder: Path, data: Path, quantization: str) -> LLM:
    return LLM(
        str(folder),
        data_dir=str(data),
        quantization=quantization,
        num_kv_blocks=360,
        block_size=8,
        max_model_len=320,
        enforce_eager=True,
        show_progress=False,
    )


def assert_low_bit_agrees(folder: Path, tmp_path: Path, vocab: int) -> None:
    reference, low_bit = engine(folder, tmp_path / "d1", "none"), engine(folder, tmp_path / "d2", "auto")
    kept = [n for n, p in low_bit.engine.runner.model.named_parameters() if getattr(p, "low_bit_format", None)]
    assert kept, "the low-bit engine holds no low-bit weights"
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(2, vocab, (n,), generator=gen).tolist() for n in range(12, 12 + 2 * NUM_PROMPTS, 2)]
    sequences = greedy_sequences(reference, prompts, NUM_DECODE)
    prompt_lens = [len(p) for p in prompts]
    ref = decode_logits(reference, sequences, prompt_lens)
    result = agreement(ref, decode_logits(low_bit, sequences, prompt_lens))
    assert result.positions == NUM_PROMPTS * NUM_DECODE
    if not torch.cuda.is_available():
        assert result.top1 == 1.0 and result.mean_kl < 1e-9, result
    else:
        assert result.top1 >= 0.99 and result.mean_kl <= 1e-3, result


@pytest.mark.slow
def test_v3_block_fp8_kept_fp8_agrees_with_the_dequantized_engine(tmp_path, tiny_deepseek):
    hf_model = tiny_deepseek("v3_aligned", tmp_path / "bf16")
    write_fp8_checkpoint(tmp_path / "bf16", tmp_path / "fp8", hf_model.config.num_hidden_layers)
    assert_low_bit_agrees(tmp_path / "fp8", tmp_path, hf_model.config.vocab_size)


@pytest.mark.slow
def test_v32_block_fp8_kept_fp8_agrees_with_the_dequantized_engine(tmp_path):
    hf_model = save_tiny_v32(tmp_path / "bf16", index_topk=16)
    write_fp8_checkpoint(tmp_path / "bf16", tmp_path / "fp8", hf_model.config.num_hidden_layers)
    assert_low_bit_agrees(tmp_path / "fp8", tmp_path, hf_model.config.vocab_size)


@pytest.mark.slow
def test_v4_fp4_experts_kept_fp4_agree_with_the_dequantized_engine(tmp_path):
    save_tiny_v4(tmp_path / "full")
    write_v4_checkpoint(tmp_path / "full", tmp_path / "fp4")
    assert_low_bit_agrees(tmp_path / "fp4", tmp_path, 384)
