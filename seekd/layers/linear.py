"""Linear layers that know how to load their tensor-parallel shard.

Each parameter carries a `weight_loader(param, loaded_weight, shard_id=None)`, so the model loader
stays generic: it finds the parameter by name and hands it the checkpoint tensor. Fused layers
(QKV, gate-up) accept their parts one at a time through `shard_id`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from seekd.distributed import all_reduce, tp_rank, tp_size
from seekd.layers.build_scope import build_config
from seekd.layers.quantization import QuantizedWeight
from seekd.layers.quantization.linear_methods import DenseLinear, linear_method

if TYPE_CHECKING:
    from seekd.kernels.gemv import GemvConfig
    from seekd.layers.lora import LoRAWeights
    from seekd.layers.norms import RMSNorm


def _divide(n: int, d: int) -> int:
    if n % d:
        raise ValueError(f"{n} is not divisible by tensor-parallel size {d}")
    return n // d


class LinearBase(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        tp_dim: int | None,
        out_parts: list[int] | None = None,
        quantizable: bool = True,
    ) -> None:
        super().__init__()
        self.tp_dim = tp_dim
        self.tp_rank = tp_rank()
        self.tp_size = tp_size()
        self.in_features = in_features
        self.out_features = out_features
        self.params_dtype = torch.get_default_dtype()  # the model dtype, which a dense weight has
        # chosen once, from the model's QuantConfig: the weight's format, how it loads and multiplies
        self.quant_method = linear_method(build_config(), out_parts or [out_features], quantizable)
        self.quant_method.create_weights(self, in_features, out_features)
        self.weight.weight_loader = self.weight_loader
        self.weight.accepts_quantized = True  # the quant method dequantizes or keeps a QuantizedWeight
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)
        # Batch-1 products through seekd/kernels/gemv.py where start-up timing found them faster
        # (seekd/engine/gemv_tuning.py); None keeps F.linear, the reference.
        self.gemv: GemvConfig | None = None
        self.gated_input = False  # fed [gate | up] through forward_gated, which may fuse the activation
        self.normed_input = False  # fed through forward_normed, which may fold in the RMSNorm before it
        self.normed_gemv: GemvConfig | None = None
        self.lora: LoRAWeights | None = None  # adapters' deltas (seekd/engine/lora_manager.py attaches them)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor | QuantizedWeight, shard_id=None) -> None:
        dim = self.tp_dim
        if dim is not None and self.tp_size > 1 and len(loaded.shape) > dim:
            size = (self.out_features, self.in_features)[dim]
            self._load(param, loaded, 0, (dim, self.tp_rank * size, size))
        else:
            self._load(param, loaded, 0, (0, 0, loaded.shape[0]))

    def _load(
        self, param: nn.Parameter, loaded: torch.Tensor | QuantizedWeight, row: int, src: tuple[int, int, int]
    ) -> None:
        """Copy the slice `src` = (dim, start, length) of a checkpoint tensor into `param` from `row`
        on: the weight through the layer's format, a bias as it is."""
        if param is self.weight:
            self.quant_method.load(self, loaded, row, src)
        elif param is self.bias:
            dim, start, length = src
            if dim == 0:
                _copy_checked(param.data.narrow(0, row, length), loaded.narrow(0, start, length))
            else:
                _copy_checked(param.data, loaded)
        else:
            raise ValueError("a weight's scales load with it, as one QuantizedWeight, not on their own")

    def become_dense(self) -> None:
        """Keep this layer in the model dtype after all: its checkpoint tensor is not low-bit."""
        self.quant_method = DenseLinear()
        self.quant_method.adopt(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(x, self.bias)

    def _product(self, x: torch.Tensor, bias: torch.Tensor | None, gated: bool = False) -> torch.Tensor:
        out = self.quant_method.apply(self, x, bias, gated)
        return out if self.lora is None else self.lora.apply(x, out)

    @property
    def weight_bytes(self) -> int:
        return self.quant_method.weight_bytes(self) + (self.bias.nbytes if self.bias is not None else 0)


def linear_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: GemvConfig | None, gated: bool = False
) -> torch.Tensor:
    """F.linear, or the tuned GEMV for one row of input (`gated`: x is [gate | up] and the product
    takes silu(gate) * up, which only the GEMV computes)."""
    if config is not None and x.dim() == 2 and x.shape[0] == 1:
        from seekd.kernels.gemv import gemv

        return gemv(x, weight, bias, config, gated)
    if gated:
        raise ValueError("a gated product needs the batch-1 GEMV; call forward_gated")
    return F.linear(x, weight, bias)


def _copy_checked(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"checkpoint tensor has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
    dst.copy_(src)


class ReplicatedLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias, tp_dim=None)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; no communication."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        out_parts: list[int] | None = None,
        quantizable: bool = True,
    ) -> None:
        super().__init__(in_features, _divide(out_features, tp_size()), bias, 0, out_parts, quantizable)

    def forward_normed(
        self, x: torch.Tensor, residual: torch.Tensor | None, norm: RMSNorm
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(norm(x + residual)), x + residual), with x alone when residual is None (the first
        layer); at batch 1 with a tuned `normed_gemv` the norm is computed inside the product."""
        if self.normed_gemv is not None and x.dim() == 2 and x.shape[0] == 1:
            from seekd.kernels.gemv import normed_gemv

            return normed_gemv(x, residual, norm.weight, norm.eps, self.weight, self.bias, self.normed_gemv)
        if residual is None:
            return self(norm(x)), x
        normed, residual = norm(x, residual)
        return self(normed), residual


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections fused into one GEMM (gate_proj + up_proj)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False) -> None:
        self.output_sizes = output_sizes
        tp = tp_size()
        super().__init__(in_features, sum(output_sizes), bias, out_parts=[_divide(s, tp) for s in output_sizes])

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int | None = None) -> None:
        if shard_id is None:
            raise ValueError("a merged linear loads one part at a time")
        sizes = [s // self.tp_size for s in self.output_sizes]
        self._load(param, loaded, sum(sizes[:shard_id]), (0, self.tp_rank * sizes[shard_id], sizes[shard_id]))


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one GEMM; KV heads are replicated when there are fewer than ranks."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False) -> None:
        tp = tp_size()
        self.head_dim = head_dim
        self.num_heads = _divide(num_heads, tp)
        self.num_kv_heads = max(1, num_kv_heads // tp)
        self.kv_replicas = max(1, tp // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        kv = self.num_kv_heads * head_dim
        super().__init__(hidden_size, out, bias, out_parts=[self.num_heads * head_dim, kv, kv])

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None = None) -> None:
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        if shard_id == "q":
            offset, size, rank = 0, q_size, self.tp_rank
        elif shard_id == "k":
            offset, size, rank = q_size, kv_size, self.tp_rank // self.kv_replicas
        elif shard_id == "v":
            offset, size, rank = q_size + kv_size, kv_size, self.tp_rank // self.kv_replicas
        else:
            raise ValueError(f"QKV shard id must be q, k or v, not {shard_id!r}")
        self._load(param, loaded, offset, (0, rank * size, size))


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial outputs are summed with an all-reduce."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(_divide(in_features, tp_size()), out_features, bias, tp_dim=1)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if param.dim() == 1:  # bias is added once, after the reduce
            _copy_checked(param.data, loaded)
            return
        super().weight_loader(param, loaded, shard_id)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return all_reduce(self._product(x, self.bias if self.tp_rank == 0 else None), self.tp_size)

    def forward_gated(self, h: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """self(act(h)) for h = [gate | up] from a gate-up projection; at batch 1 with a tuned GEMV
        the activation is computed inside the product instead of by its own kernel."""
        if isinstance(self.quant_method, DenseLinear) and self.gemv is not None and h.dim() == 2 and h.shape[0] == 1:
            return all_reduce(self._product(h, self.bias if self.tp_rank == 0 else None, gated=True), self.tp_size)
        return self(act(h))
