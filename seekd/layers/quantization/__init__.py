"""How layers store their weights: the checkpoint's low-bit formats kept on the device.

A full-size DeepSeek only fits a node in the precision it ships in (R1/V3: 128x128 block FP8; V4:
FP4 routed experts, FP8 elsewhere), so its weights are never widened while loading. The model loader
pairs each low-bit tensor with its scale into a `QuantizedWeight` and hands that to the parameter's
weight loader: a layer built low-bit copies (its shard of) the codes and scales as they are; any other
parameter receives the dequantized tensor, which is also the reference every kernel is tested against.

Which layers are built low-bit is decided once, before the model is built (`QuantConfig`, resolved
from config.json and `--quantization`, handed to the layers through `layers.build_scope`), and each
layer holds the method object it was given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seekd.intmath import cdiv

FP8_BLOCK = 128  # rows and columns of one block-FP8 scale (DeepSeek's weight_block_size)
FP4_BLOCK = 32  # input columns that share one FP4 (ue8m0) scale
FP8_MAX = 448.0  # largest float8_e4m3fn value
AMAX_FLOOR = 1e-10  # an all-zero block still gets a finite scale

# e2m1 code -> value; bit 3 is the sign (DeepSeek's FP4_TABLE, the OCP MX FP4 element format)
FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)

WEIGHT_FORMATS = ("dense", "fp8_block", "fp4")
LINEAR_FORMATS = ("dense", "fp8_block", "int4", "int8")


def dequantize_block_fp8(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    """weight [out, in] in float8 times its per-block scale_inv [ceil(out/bo), ceil(in/bi)]."""
    rows, cols = weight.shape
    expected = (cdiv(rows, block[0]), cdiv(cols, block[1]))
    if tuple(scale_inv.shape) != expected:
        raise ValueError(
            f"block scales of shape {tuple(scale_inv.shape)} for a {rows}x{cols} weight with "
            f"{block[0]}x{block[1]} blocks; expected {expected}"
        )
    scale = scale_inv.float().repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return (weight.float() * scale).to(dtype)


def ue8m0_to_float(scale: torch.Tensor) -> torch.Tensor:
    """ue8m0 scales as float32, whether stored as float8_e8m0fnu, raw exponent bytes or already floats."""
    if scale.dtype == torch.float8_e8m0fnu:
        return scale.float()
    if scale.dtype in (torch.uint8, torch.int8):
        return (scale.view(torch.uint8).to(torch.int32) << 23).view(torch.float32)
    return scale.float()


def ue8m0_bytes(scale: torch.Tensor) -> torch.Tensor:
    """ue8m0 scales as the raw exponent bytes the FP4 kernels read (a power-of-two float is its exponent)."""
    if scale.dtype == torch.float8_e8m0fnu:
        return scale.view(torch.uint8)
    if scale.dtype in (torch.uint8, torch.int8):
        return scale.view(torch.uint8)
    return (scale.float().view(torch.int32) >> 23).to(torch.uint8)


def dequantize_fp4(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """DeepSeek-V4's FP4 expert weights: packed [out, in/2] bytes holding two e2m1 codes each (the
    low nibble is the even column), times scale [out, in/32] (ue8m0, i.e. powers of two)."""
    codes = packed.view(torch.uint8)
    rows, cols = codes.shape[0], codes.shape[1] * 2
    if tuple(scale.shape) != (rows, cols // FP4_BLOCK):
        raise ValueError(
            f"FP4 scales of shape {tuple(scale.shape)} for a {rows}x{cols} weight; "
            f"expected {(rows, cols // FP4_BLOCK)} (one per {FP4_BLOCK} values of a row)"
        )
    table = torch.tensor(FP4_E2M1_VALUES, dtype=torch.float32, device=packed.device)
    values = table[torch.stack((codes & 0x0F, codes >> 4), dim=-1).flatten(-2).long()]
    return (values * ue8m0_to_float(scale).repeat_interleave(FP4_BLOCK, dim=1)).to(dtype)


@dataclass(frozen=True)
class QuantizedWeight:
    """A checkpoint's low-bit matrix with its scales, as it travels from the file to a parameter.

    fp8_block: data [out, in] float8_e4m3fn, scale [ceil(out/128), ceil(in/128)] float32 (multiplied in).
    fp4: data [out, in/2] uint8 (two e2m1 codes, low nibble first), scale [out, in/32] ue8m0 bytes.
    """

    data: torch.Tensor
    scale: torch.Tensor
    format: str

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.data.shape
        return (rows, cols * 2) if self.format == "fp4" else (rows, cols)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.scale.nbytes

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        if self.format == "fp4":
            return dequantize_fp4(self.data, self.scale, dtype)
        return dequantize_block_fp8(self.data, self.scale, (FP8_BLOCK, FP8_BLOCK), dtype)

    def _scale_step(self, dim: int) -> int:
        if self.format == "fp4":
            return FP4_BLOCK if dim == 1 else 1
        return FP8_BLOCK

    def splits_at(self, dim: int, start: int, length: int) -> bool:
        """Whether [start, start + length) along `dim` begins and ends on scale boundaries (or the end)."""
        step = self._scale_step(dim)
        return start % step == 0 and (length % step == 0 or start + length == self.shape[dim])

    def narrow(self, dim: int, start: int, length: int) -> QuantizedWeight:
        """The slice [start, start + length) along `dim` of the full-precision matrix, codes and scales
        together; a slice must begin and end on a scale boundary (or at the matrix's end)."""
        if start == 0 and length == self.shape[dim]:
            return self
        if not self.splits_at(dim, start, length):
            raise ValueError(
                f"a {self.format} weight of shape {self.shape} cannot be split at [{start}, {start + length}) "
                f"along dim {dim}: its scales cover {self._scale_step(dim)} values; load it with --quantization none"
            )
        if self.format == "fp4":
            if dim == 0:
                return QuantizedWeight(self.data.narrow(0, start, length), self.scale.narrow(0, start, length), "fp4")
            return QuantizedWeight(
                self.data.narrow(1, start // 2, length // 2),
                self.scale.narrow(1, start // FP4_BLOCK, length // FP4_BLOCK),
                "fp4",
            )
        return QuantizedWeight(
            self.data.narrow(dim, start, length),
            self.scale.narrow(dim, start // FP8_BLOCK, cdiv(length, FP8_BLOCK)),
            "fp8_block",
        )


def quantize_weight_fp8_blocks(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A float weight [N, K] -> (codes float8_e4m3fn [N, K], scale float32 [ceil(N/128), ceil(K/128)]) in
    DeepSeek's layout (real = code * scale), each 128x128 block's largest magnitude mapped to 448: the
    online FP8 of bf16 checkpoints. Works one 128-row band at a time, so no float32 copy of the whole
    weight is ever made."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"expected a 2-D floating-point weight, got {weight.dtype} {tuple(weight.shape)}")
    n, k = weight.shape
    k_blocks = cdiv(k, FP8_BLOCK)
    codes = torch.empty((n, k), dtype=torch.float8_e4m3fn, device=weight.device)
    scale = torch.empty((cdiv(n, FP8_BLOCK), k_blocks), dtype=torch.float32, device=weight.device)
    for band, start in enumerate(range(0, n, FP8_BLOCK)):
        rows = weight[start : start + FP8_BLOCK].float()
        padded = torch.nn.functional.pad(rows, (0, k_blocks * FP8_BLOCK - k)).view(rows.shape[0], k_blocks, FP8_BLOCK)
        band_scale = padded.abs().amax(dim=(0, 2)).clamp(min=AMAX_FLOOR) / FP8_MAX
        scaled = (padded / band_scale[None, :, None]).clamp(-FP8_MAX, FP8_MAX)
        codes[start : start + FP8_BLOCK] = scaled.view(rows.shape[0], -1)[:, :k].to(torch.float8_e4m3fn)
        scale[band] = band_scale
    return codes, scale


def quantize_fp8_blocks(weight: torch.Tensor) -> QuantizedWeight:
    """quantize_weight_fp8_blocks as a QuantizedWeight."""
    return QuantizedWeight(*quantize_weight_fp8_blocks(weight), "fp8_block")


@dataclass(frozen=True)
class QuantConfig:
    """What the layers of one model are built to hold.

    linear: "dense" or "fp8_block" for the dense projections (attention, dense MLP, shared experts).
    experts: "dense", "fp8_block" or "fp4" for the routed experts.
    fp8_gemm: how block-FP8 products run: "w8a8" (FP8 tensor cores, sm_89+), "w8a16" (FP8 decoded in
      registers, bf16 tensor cores, sm_80+) or "torch" (dequantize per call: the CPU reference).
    online: bf16 checkpoint weights are quantized to block FP8 as they load (`--quantization fp8`),
      or to int8 rows (`--quantization int8`, a CPU format).
    int4_gemm, group_size, act_order: INT4 linears (AWQ/GPTQ, quantization/int4.py): how products run
      ("triton", "torch" = dequantize per call, "cpu" = torch's int4 CPU kernel), the group size (-1:
      one group per row) and whether the checkpoint has act-order (g_idx) input permutations.
    scheme: the name reported for this precision (/v1/models, the start-up log), e.g. "awq".
    """

    linear: str = "dense"
    experts: str = "dense"
    fp8_gemm: str = "torch"
    online: bool = False
    int4_gemm: str = "torch"
    group_size: int = 128
    act_order: bool = False
    scheme: str = ""

    def __post_init__(self) -> None:
        if self.linear not in LINEAR_FORMATS:
            raise ValueError(f"linear weight format must be one of {', '.join(LINEAR_FORMATS)}, not {self.linear!r}")
        if self.experts not in WEIGHT_FORMATS:
            raise ValueError(f"expert weight format must be one of {', '.join(WEIGHT_FORMATS)}, not {self.experts!r}")
        if self.fp8_gemm not in ("w8a8", "w8a16", "torch"):
            raise ValueError(f"fp8_gemm must be w8a8, w8a16 or torch, not {self.fp8_gemm!r}")

    @property
    def low_bit(self) -> bool:
        return self.linear != "dense" or self.experts != "dense"

    @property
    def precision(self) -> str:
        """What the weights are held in, as reported: the scheme's name, else the formats kept."""
        if self.scheme:
            return self.scheme
        if not self.low_bit:
            return "dense"
        return self.linear if self.experts in (self.linear, "dense") else f"{self.linear}+{self.experts} experts"


DENSE = QuantConfig()
