from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seekd.layers.build_scope import build_kernels


class SiluAndMul(nn.Module):
    """silu(gate) * up on a fused [.., 2*d] gate-up projection."""

    def __init__(self, *, use_kernel: bool | None = None) -> None:
        """`use_kernel`: the fused Triton kernel; unset = the model's KernelChoice."""
        super().__init__()
        self.use_kernel = build_kernels().activations if use_kernel is None else use_kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_kernel and x.dim() == 2:
            from seekd.kernels.activation import silu_and_mul

            return silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
