"""RMSNorm with an optional fused residual add (the residual is carried between layers)."""

from __future__ import annotations

import torch
from torch import nn

from seekd.layers.build_scope import build_kernels


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6, *, use_kernel: bool | None = None) -> None:
        """`use_kernel`: the fused Triton kernel; unset = the model's KernelChoice."""
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.use_kernel = build_kernels().norms if use_kernel is None else use_kernel

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.use_kernel and x.dim() == 2:
            from seekd.kernels.rmsnorm import rms_norm

            out, residual_out = rms_norm(x, self.weight, self.eps, residual)
            return out if residual is None else (out, residual_out)
        if residual is None:
            return self._norm(x)
        residual = x + residual
        return self._norm(residual), residual
