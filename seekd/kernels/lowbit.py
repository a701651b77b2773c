"""Decoding low-bit weight codes in registers, shared by the FP8 GEMMs and the fused MoE kernels.

Both decoders are integer bit moves into a float16 pattern, so they need no FP8 or FP4 hardware
(sm_80 has none) and run the same under Triton's CPU interpreter. The float16 they produce is the
true value times a fixed power of two; the caller folds the inverse into its scale:

- e4m3 (FP8, bias 7): the seven magnitude bits placed under float16's exponent (bias 15) read as
  value * 2**-8, subnormals included (both formats' subnormals scale the same way).
- e2m1 (FP4, bias 1): the three magnitude bits placed likewise read as value * 2**-14.

DeepSeek's ue8m0 scales are bare float32 exponents: byte s means 2**(s - 127).
"""

from __future__ import annotations

import triton
import triton.language as tl

E4M3_DECODE_FACTOR = 256.0  # e4m3_to_f16 returns value / 256
E2M1_DECODE_FACTOR = 16384.0  # e2m1_to_f16 returns value / 16384


@triton.jit
def e4m3_to_f16(bits):
    """bits: uint8 codes of float8_e4m3fn -> float16 equal to value / 256 (exact)."""
    b = bits.to(tl.uint16)
    return (((b & 0x80) << 8) | ((b & 0x7F) << 7)).to(tl.float16, bitcast=True)


@triton.jit
def e2m1_to_f16(code):
    """code: e2m1 codes in the low four bits (sign bit 3) -> float16 equal to value / 16384 (exact)."""
    c = code.to(tl.uint16)
    return (((c & 0x8) << 12) | ((c & 0x7) << 9)).to(tl.float16, bitcast=True)


@triton.jit
def ue8m0_to_f32(s):
    """s: uint8 ue8m0 scale bytes -> float32 2**(s - 127)."""
    return (s.to(tl.uint32) << 23).to(tl.float32, bitcast=True)
