"""The in-register decoders of FP8 (e4m3), FP4 (e2m1) and ue8m0 scale codes against torch's own
float8 dtypes and DeepSeek's FP4 table, over every code."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from seekd.kernels.lowbit import E2M1_DECODE_FACTOR, E4M3_DECODE_FACTOR, e2m1_to_f16, e4m3_to_f16, ue8m0_to_f32
from seekd.layers.quantization import FP4_E2M1_VALUES

pytestmark = pytest.mark.triton


@triton.jit
def _decode_all(codes_ptr, fp8_ptr, fp4_ptr, scale_ptr, fp8_factor, fp4_factor, N: tl.constexpr):
    i = tl.arange(0, N)
    codes = tl.load(codes_ptr + i)
    tl.store(fp8_ptr + i, e4m3_to_f16(codes).to(tl.float32) * fp8_factor)
    tl.store(fp4_ptr + i, e2m1_to_f16(codes & 0xF).to(tl.float32) * fp4_factor)
    tl.store(scale_ptr + i, ue8m0_to_f32(codes))


def test_every_code_decodes_to_its_value(kernel_device):
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).to(kernel_device)
    fp8, fp4, scale = (torch.full((256,), float("nan"), device=kernel_device) for _ in range(3))
    _decode_all[(1,)](codes, fp8, fp4, scale, E4M3_DECODE_FACTOR, E2M1_DECODE_FACTOR, N=256)

    want_fp8 = codes.view(torch.float8_e4m3fn).float()
    finite = ~want_fp8.isnan()  # 0x7f and 0xff are NaN in e4m3fn; no checkpoint holds them
    assert torch.equal(fp8[finite], want_fp8[finite])
    assert torch.equal(fp4, torch.tensor(FP4_E2M1_VALUES, device=kernel_device)[codes.long() & 0xF])
    want_scale = codes.view(torch.float8_e8m0fnu).float()
    normal = (codes > 0) & ~want_scale.isnan()  # 2**-127 is a float32 subnormal, 0xff is NaN
    assert torch.equal(scale[normal], want_scale[normal])
