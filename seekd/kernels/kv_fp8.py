"""Writing FP8 (e4m3) KV-cache entries from Triton kernels: the encoder and the per-segment scale.

The encoder is integer bit moves with round-to-nearest-even (torch's cast rounds the same way), so it
needs no FP8 hardware (sm_80 has none) and runs the same under Triton's CPU interpreter; readers decode
with lowbit.e4m3_to_f16. Scales and quotients are IEEE-rounded (div_rn), so a kernel writes exactly
the codes and scales of the torch reference (seekd/layers/kv_quant.py): scale = amax / 448, code =
e4m3(x / scale).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def f32_to_e4m3(x):
    """x: float32 with |x| <= 448 -> uint8 codes of float8_e4m3fn, rounded to nearest even."""
    i = x.to(tl.int32, bitcast=True)
    sign = (i >> 24) & 0x80
    a = i & 0x7FFFFFFF
    # normal codes: drop 20 mantissa bits rounding to nearest even, then rebias the exponent 127 -> 7
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - (120 << 3)
    # subnormal codes (|x| < 2**-6): float32 near 2**14 has an ulp of 2**-9, e4m3's subnormal step, so
    # the addition rounds |x| to its code; a carry into 8 is the smallest normal code, as it should be
    sub = (tl.abs(x) + 16384.0).to(tl.int32, bitcast=True) - 0x46800000
    code = tl.minimum(tl.where(a < 0x3C800000, sub, normal), 126)
    return (code | sign).to(tl.uint8)


@triton.jit
def e4m3_scale(amax):
    """The scale of a segment whose largest magnitude is amax (float32): its values map onto +-448."""
    return tl.math.div_rn(amax, amax * 0.0 + 448.0)


@triton.jit
def quantize_e4m3(x, scale):
    """x: float32 values, scale: their segments' scales (broadcast) -> uint8 codes. A zero scale
    (an all-zero segment) writes zero codes."""
    safe = tl.where(scale > 0, scale, 1.0)
    y = tl.math.div_rn(x, safe + tl.zeros_like(x))
    return f32_to_e4m3(tl.minimum(tl.maximum(y, -448.0), 448.0))
