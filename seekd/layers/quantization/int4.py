"""Group-wise INT4 weights (W4A16), the one layout seekd keeps AWQ, GPTQ and 4-bit GGUF weights in.

real[n, k] = (code[k, n] - zero[g, n]) * scale[g, n] with g = k // group_size, where

- `qweight` int32 [K/8, N]: input rows k = 8i..8i+7 of column n in word [i, n], row 8i + j in
  bits 4j..4j+3 (GPTQ's own layout, so GPTQ loads without repacking; AWQ's [K, N/8] words with its
  interleaved nibble order are repacked once, at load);
- `scales` float16 [K/G, N] as both formats ship them; `zeros` uint8 [K/G, N], the true zero points
  (GPTQ v1 files store zero - 1);
- `perm` int32 [K] or None: GPTQ's act-order quantizes the input channels in a learned order, so
  `g_idx` scatters the groups over K. The rows are stored sorted by group instead and the product
  reads x[:, perm], which makes every group contiguous again (the same trick as exllama and Marlin).

`dequantize` is the reference every INT4 kernel is compared with, and what the CPU path runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seekd.layers.quantization import QuantizedWeight

PACK = 8  # 4-bit codes per int32 word
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AWQ's nibble i holds column AWQ_ORDER[i] of its eight
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column j of eight sits in nibble AWQ_REVERSE_ORDER[j]
_SHIFTS = tuple(range(0, 32, 4))


def unpack_int4(words: torch.Tensor, dim: int) -> torch.Tensor:
    """int32 words -> uint8 codes with the eight nibbles of each word spread along `dim` (low nibble first)."""
    shifts = torch.tensor(_SHIFTS, dtype=torch.int32, device=words.device)
    if dim == 0:
        codes = (words[:, None, :] >> shifts[None, :, None]) & 0xF
        return codes.reshape(words.shape[0] * PACK, words.shape[1]).to(torch.uint8)
    codes = (words[:, :, None] >> shifts[None, None, :]) & 0xF
    return codes.reshape(words.shape[0], words.shape[1] * PACK).to(torch.uint8)


def pack_int4(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """uint8 codes (0..15) -> int32 words of eight consecutive codes along `dim` (low nibble first)."""
    shifts = torch.tensor(_SHIFTS, dtype=torch.int32, device=codes.device)
    c = codes.to(torch.int32)
    if dim == 0:
        c = c.view(c.shape[0] // PACK, PACK, c.shape[1]) << shifts[None, :, None]
        return _or_reduce(c, 1)
    c = c.view(c.shape[0], c.shape[1] // PACK, PACK) << shifts[None, None, :]
    return _or_reduce(c, 2)


def _or_reduce(parts: torch.Tensor, dim: int) -> torch.Tensor:
    out = parts.select(dim, 0).clone()
    for j in range(1, PACK):
        out |= parts.select(dim, j)
    return out


def awq_columns(words: torch.Tensor) -> torch.Tensor:
    """AWQ's [rows, N/8] words -> uint8 codes [rows, N] in column order."""
    codes = unpack_int4(words, dim=1)
    return codes.view(codes.shape[0], -1, PACK)[:, :, list(AWQ_REVERSE_ORDER)].reshape(codes.shape)


@dataclass(frozen=True)
class Int4Weight(QuantizedWeight):
    """An INT4 matrix in seekd's layout (module docstring): `data` is qweight, `scale` the float16
    scales; `format` is always "int4"."""

    zeros: torch.Tensor
    group_size: int
    perm: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[1], self.data.shape[0] * PACK

    @property
    def nbytes(self) -> int:
        extra = self.perm.nbytes if self.perm is not None else 0
        return self.data.nbytes + self.scale.nbytes + self.zeros.nbytes + extra

    def codes(self) -> torch.Tensor:
        """uint8 codes [K, N] in stored (group-sorted) row order."""
        return unpack_int4(self.data, dim=0)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The [N, K] matrix in the original input order."""
        scale = self.scale.float().repeat_interleave(self.group_size, 0)
        zeros = self.zeros.float().repeat_interleave(self.group_size, 0)
        sorted_rows = (self.codes().float() - zeros) * scale  # [K, N], rows in stored order
        if self.perm is not None:
            original = torch.empty_like(sorted_rows)
            original[self.perm.long()] = sorted_rows
            sorted_rows = original
        return sorted_rows.t().to(dtype)

    def splits_at(self, dim: int, start: int, length: int) -> bool:
        if dim == 0:
            return True
        if self.perm is not None:
            return start == 0 and length == self.shape[1]
        return start % self.group_size == 0 and length % self.group_size == 0

    def narrow(self, dim: int, start: int, length: int) -> Int4Weight:
        """The slice [start, start + length) of the [N, K] matrix: any columns of output features (dim 0),
        whole groups of input features (dim 1, not for act-order weights)."""
        if start == 0 and length == self.shape[dim]:
            return self
        if not self.splits_at(dim, start, length):
            raise ValueError(
                f"an INT4 weight of shape {self.shape} with {self.group_size}-wide groups"
                f"{' in act-order' if self.perm is not None else ''} cannot be split at [{start}, {start + length}) "
                f"of its input features; load it with --quantization none or a tensor-parallel size that keeps groups"
            )
        if dim == 0:
            return Int4Weight(
                self.data.narrow(1, start, length),
                self.scale.narrow(1, start, length),
                "int4",
                self.zeros.narrow(1, start, length),
                self.group_size,
                self.perm,
            )
        g = self.group_size
        return Int4Weight(
            self.data.narrow(0, start // PACK, length // PACK),
            self.scale.narrow(0, start // g, length // g),
            "int4",
            self.zeros.narrow(0, start // g, length // g),
            g,
        )


def int4_weight(
    codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, g_idx: torch.Tensor | None = None
) -> Int4Weight:
    """Codes [K, N] (0..15, original row order) with per-group scales and zero points [K/G, N]; `g_idx`
    [K] the group of each input row when it is not k // group_size (act-order)."""
    k, n = codes.shape
    if k % PACK or k % group_size:
        raise ValueError(f"INT4 weights need input features ({k}) divisible by 8 and by the group size {group_size}")
    if tuple(scales.shape) != (k // group_size, n) or tuple(zeros.shape) != (k // group_size, n):
        raise ValueError(
            f"INT4 scales {tuple(scales.shape)} and zeros {tuple(zeros.shape)} for a [{k}, {n}] weight with "
            f"groups of {group_size}; expected {(k // group_size, n)}"
        )
    perm = None
    if g_idx is not None:
        g_idx = g_idx.to(torch.int64)
        if not torch.equal(g_idx, torch.arange(k, device=g_idx.device) // group_size):
            perm = torch.sort(g_idx, stable=True).indices
            if not torch.equal(g_idx[perm], torch.arange(k, device=g_idx.device) // group_size):
                raise ValueError(f"g_idx does not give every group exactly {group_size} input rows")
            codes = codes[perm]
            perm = perm.to(torch.int32)
    return Int4Weight(
        pack_int4(codes, dim=0), scales.to(torch.float16), "int4", zeros.to(torch.uint8), group_size, perm
    )


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> Int4Weight:
    """AutoAWQ's GEMM layout: qweight int32 [K, N/8], qzeros int32 [K/G, N/8] (both in AWQ's nibble
    order), scales float16 [K/G, N]."""
    return int4_weight(awq_columns(qweight), scales, awq_columns(qzeros), group_size)


def from_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor | None,
    group_size: int,
    zero_offset: int = 1,
) -> Int4Weight:
    """GPTQ's layout: qweight int32 [K/8, N], qzeros int32 [K/G, N/8] (sequential nibbles, storing
    zero - `zero_offset`: 1 in the original format, 0 in GPTQModel's gptq_v2), scales [K/G, N], g_idx [K]."""
    zeros = (unpack_int4(qzeros, dim=1).to(torch.int32) + zero_offset) & 0xF
    return int4_weight(unpack_int4(qweight, dim=0), scales, zeros, group_size, g_idx)
