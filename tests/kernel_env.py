"""Where kernel tests run: on CUDA, or on the CPU through Triton's interpreter, which
tests/conftest.py turns on where there is no GPU and which gets bfloat16 arithmetic wrong."""

from __future__ import annotations

import os

import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BF16_TILES = "Triton's CPU interpreter multiplies bfloat16 tiles wrongly; float32 covers the indexing"


def assert_fp8_codes_close(codes: torch.Tensor, ref_codes: torch.Tensor) -> None:
    """FP8 caches written by two paths hold the same e4m3 codes, but for a rare move by one step where
    the values before quantization rounded apart in their last bit (fused kernels vs torch, GPU FMAs)."""
    step = (codes.view(torch.uint8).int() - ref_codes.view(torch.uint8).int()).abs()
    assert step.max() <= 1 and step.count_nonzero() <= 1e-3 * step.numel()
