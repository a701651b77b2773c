"""DeepSeekMoE: a top-k router over fine-grained routed experts, plus always-on shared experts.

DeepSeek-V4 adds sqrt(softplus) scores, hash routing (a frozen token-id -> experts table for its first
layers) and SwiGLU clipping (`swiglu_limit`) of the experts' gate and up projections.

The router and the experts meet at one interface, `experts(hidden, topk_weights, topk_ids)`, so a
fused kernel can replace the reference loop over active experts without touching the model.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from seekd.distributed import all_reduce, ep_dispatch, ep_rank, ep_size, tp_rank, tp_size
from seekd.intmath import cdiv
from seekd.layers.build_scope import build_config, build_kernels, build_placement
from seekd.layers.expert_parallel import all_to_all_experts, local_expert_range, to_local_ids
from seekd.layers.hybrid_experts import ExpertHomes
from seekd.layers.quantization import FP4_BLOCK, FP8_BLOCK, QuantizedWeight, quantize_fp8_blocks
from seekd.layers.quantization.int8_rows import dequantize_int8_rows, int8_rows_linear, quantize_int8_rows

if TYPE_CHECKING:
    from seekd.kernels.fused_moe import ExpertWeights

SCORING_FUNCS = ("softmax", "sigmoid", "sqrtsoftplus")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")


class TopKRouter(nn.Module):
    """Scores every routed expert and picks `top_k` per token, in float32 (routing decisions flip
    under bf16 rounding).

    - greedy: top-k of all scores (V2-Lite).
    - group_limited_greedy: keep the `topk_group` groups with the highest max score (V2).
    - noaux_tc: rank groups by the sum of their top-2 biased scores, choose experts by the biased
      score `scores + e_score_correction_bias`, but weight them by the unbiased score (V3).
    """

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        *,
        scoring_func: str = "softmax",
        topk_method: str = "greedy",
        n_group: int = 1,
        topk_group: int = 1,
        norm_topk_prob: bool = False,
        routed_scaling_factor: float = 1.0,
        use_kernel: bool | None = None,
    ) -> None:
        """`use_kernel`: the one-launch Triton routing; unset = the model's KernelChoice."""
        super().__init__()
        if scoring_func not in SCORING_FUNCS:
            raise ValueError(f"scoring_func must be one of {', '.join(SCORING_FUNCS)}, not {scoring_func!r}")
        if topk_method not in TOPK_METHODS:
            raise ValueError(f"topk_method must be one of {', '.join(TOPK_METHODS)}, not {topk_method!r}")
        if num_experts % n_group:
            raise ValueError(f"n_routed_experts={num_experts} is not divisible by n_group={n_group}")
        self.top_k = top_k
        self.scoring_func = scoring_func
        self.topk_method = topk_method
        self.n_group = n_group
        self.topk_group = topk_group
        self.norm_topk_prob = norm_topk_prob
        self.routed_scaling_factor = routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size, dtype=torch.float32), requires_grad=False)
        if topk_method == "noaux_tc":
            self.e_score_correction_bias = nn.Parameter(
                torch.empty(num_experts, dtype=torch.float32), requires_grad=False
            )
        self.use_kernel = build_kernels().moe if use_kernel is None else use_kernel

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [T, hidden] -> (topk_weights [T, top_k] float32, topk_ids [T, top_k] int64). The torch
        ops below are the reference; the kernel path makes the same choice in one launch after the logits."""
        if self.use_kernel:
            from seekd.kernels.moe_routing import route_topk, router_logits

            return route_topk(
                router_logits(x, self.weight),
                self.top_k,
                scoring_func=self.scoring_func,
                topk_method=self.topk_method,
                n_group=self.n_group,
                topk_group=self.topk_group,
                norm_topk_prob=self.norm_topk_prob,
                routed_scaling_factor=self.routed_scaling_factor,
                correction_bias=getattr(self, "e_score_correction_bias", None),
            )
        scores = expert_scores(F.linear(x.float(), self.weight.float()), self.scoring_func)
        if self.topk_method == "greedy":
            weights, ids = scores.topk(self.top_k, dim=-1)
        else:
            choice = scores + self.e_score_correction_bias if self.topk_method == "noaux_tc" else scores
            ids = self._group_limited_topk(choice)
            weights = scores.gather(1, ids)
        if self.norm_topk_prob and self.top_k > 1:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.routed_scaling_factor, ids

    def _group_limited_topk(self, choice: torch.Tensor) -> torch.Tensor:
        grouped = choice.view(choice.size(0), self.n_group, -1)
        if self.topk_method == "noaux_tc":
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        else:
            group_scores = grouped.max(dim=-1).values
        group_ids = group_scores.topk(self.topk_group, dim=-1).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_ids, True)
        masked = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).flatten(1)
        return masked.topk(self.top_k, dim=-1).indices


def expert_scores(logits: torch.Tensor, scoring_func: str) -> torch.Tensor:
    if scoring_func == "softmax":
        return logits.softmax(dim=-1)
    if scoring_func == "sigmoid":
        return logits.sigmoid()
    return F.softplus(logits).sqrt()


class HashRouter(nn.Module):
    """DeepSeek-V4's hash routing: a frozen `tid2eid[token id]` table chooses the experts; the learned
    gate only weights them (normalised, scaled). Needs the token ids, so it is called with them."""

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        vocab_size: int,
        *,
        scoring_func: str = "sqrtsoftplus",
        routed_scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if scoring_func not in SCORING_FUNCS:
            raise ValueError(f"scoring_func must be one of {', '.join(SCORING_FUNCS)}, not {scoring_func!r}")
        self.top_k = top_k
        self.scoring_func = scoring_func
        self.routed_scaling_factor = routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size, dtype=torch.float32), requires_grad=False)
        self.tid2eid = nn.Parameter(torch.zeros(vocab_size, top_k, dtype=torch.int64), requires_grad=False)

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [T, hidden], input_ids: [T] -> (topk_weights [T, top_k] float32, topk_ids [T, top_k] int64)."""
        scores = expert_scores(F.linear(x.float(), self.weight.float()), self.scoring_func)
        ids = self.tid2eid[input_ids]
        weights = scores.gather(1, ids)
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.routed_scaling_factor, ids


_PER_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_PACKED = re.compile(r"^(.*\.experts)\.(gate_up_proj|down_proj)$")


def expert_weight_target(name: str) -> tuple[str, object] | None:
    """Map a checkpoint name onto RoutedExperts' stacked parameters: (parameter name, shard id), or
    None when the name is not a routed-expert weight. Accepts DeepSeek's per-expert layout
    (`experts.{i}.gate_proj.weight`) and transformers' packed one (`experts.gate_up_proj` [E, 2I, H])."""
    if m := _PER_EXPERT.match(name):
        param = "w2_weight" if m[3] == "down_proj" else "w13_weight"
        return f"{m[1]}.{param}", (int(m[2]), m[3])
    if m := _PACKED.match(name):
        return f"{m[1]}.{'w13_weight' if m[2] == 'gate_up_proj' else 'w2_weight'}", None
    return None


class RoutedExperts(nn.Module):
    """All routed experts of one layer as stacked SwiGLU weights: w13 [E, 2*I, H] (gate rows, then up
    rows) and w2 [E, H, I]. Tensor parallelism splits I across ranks and sums the outputs.
    `swiglu_limit` (V4) clips gate pre-activations from above and up pre-activations to +-limit.

    Low-bit formats keep the checkpoint's codes: fp8_block adds `*_weight_scale_inv` [E, rows/128,
    cols/128]; fp4 stores two codes a byte ([E, rows, cols/2]) with `*_weight_scale` [E, rows, cols/32]
    ue8m0 bytes. The format comes from the model's QuantConfig, unless this rank's shard of I does not
    fall on the format's scale boundaries (then the experts are dense).

    Hybrid layers: the experts the build's ExpertPlacement puts on the host live in `host`, a second
    stack in host memory (pinned when CUDA is present) in the checkpoint's format or int8 rows (a CPU
    format: codes [E, rows, cols] int8, `*_weight_scale` [E, rows] float32), and run on the CPU while
    the device runs its own; `homes` maps each expert id to its stack and index there."""

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        swiglu_limit: float | None = None,
        *,
        use_kernel: bool | None = None,
        layer: int | None = None,
        host_format: str | None = None,
    ) -> None:
        """`use_kernel`: the fused Triton MoE kernel; unset = the model's KernelChoice. `layer`: the
        decoder layer's index, by which the ExpertPlacement names host experts. `host_format` builds
        the host stack of a hybrid layer (in host memory, on the CPU path, with no host of its own)."""
        super().__init__()
        # expert parallelism: whole experts on each of the stage's ranks, the intermediate size unsplit
        self.ep_rank, self.ep_size = (0, 1) if host_format is not None else (ep_rank(), ep_size())
        self.local_experts = local_expert_range(num_experts, self.ep_rank, self.ep_size)
        self.dispatch = ep_dispatch()
        self.tp_rank, self.tp_size = (0, 1) if self.ep_size > 1 else (tp_rank(), tp_size())
        if intermediate_size % self.tp_size:
            raise ValueError(
                f"moe_intermediate_size={intermediate_size} is not divisible by tensor-parallel size {self.tp_size}"
            )
        self.intermediate_size = inter = intermediate_size // self.tp_size
        self.swiglu_limit = swiglu_limit
        self.layer = layer
        self.on_host = host_format is not None
        self.format = expert_format(build_config().experts, hidden_size, inter)
        if host_format == "int8":
            self.format = "int8"
        host_ids = build_placement().on_host(layer)
        if host_ids and self.ep_size > 1:
            raise ValueError("routed experts in host memory (--cpu-experts) do not combine with expert parallelism")
        self.homes = ExpertHomes.of(num_experts, host_ids) if host_ids else None
        own = len(self.local_experts) - len(host_ids)
        if self.ep_size > 1:  # tokens each expert received, by global id (load balance statistics)
            self.register_buffer("expert_load", torch.zeros(num_experts, dtype=torch.int64), persistent=False)
        self.w13_weight = self._stack(own, 2 * inter, hidden_size, "w13")
        self.w2_weight = self._stack(own, hidden_size, inter, "w2")
        self.use_kernel = False if self.on_host else build_kernels().moe if use_kernel is None else use_kernel
        self.batch1_tiling = None  # the kernel's tiling for one token, timed at start-up; None: its default
        self.host = self._host_stack(len(host_ids), hidden_size, intermediate_size) if host_ids else None

    def _host_stack(self, num_experts: int, hidden_size: int, intermediate_size: int) -> RoutedExperts:
        """The host experts' stack: in host memory, or on meta while a memory plan counts bytes."""
        placement = build_placement()
        host_format = self.format if placement.host_format == "checkpoint" else placement.host_format
        home = "meta" if torch.get_default_device().type == "meta" else "cpu"
        with torch.device(home):
            return RoutedExperts(
                num_experts, hidden_size, intermediate_size, self.swiglu_limit, host_format=host_format
            )

    def _stack(self, num_experts: int, rows: int, cols: int, name: str) -> nn.Parameter:
        """The [E, rows, cols] weight stack in this layer's format, with its scales registered beside it.
        A host stack is pinned when CUDA is present, so its transfers to the GPU run asynchronously."""
        pin = self.on_host and torch.cuda.is_available() and torch.get_default_device().type == "cpu"

        def empty(*shape: int, dtype: torch.dtype | None = None) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, dtype=dtype, pin_memory=pin), requires_grad=False)

        if self.format == "dense":
            weight = empty(num_experts, rows, cols)
        elif self.format == "fp8_block":
            weight = empty(num_experts, rows, cols, dtype=torch.float8_e4m3fn)
            scale = empty(num_experts, cdiv(rows, FP8_BLOCK), cdiv(cols, FP8_BLOCK), dtype=torch.float32)
            self.register_parameter(f"{name}_weight_scale_inv", scale)
        elif self.format == "int8":
            weight = empty(num_experts, rows, cols, dtype=torch.int8)
            scale = empty(num_experts, rows, dtype=torch.float32)
            self.register_parameter(f"{name}_weight_scale", scale)
        else:
            weight = empty(num_experts, rows, cols // 2, dtype=torch.uint8)
            scale = empty(num_experts, rows, cols // FP4_BLOCK, dtype=torch.uint8)
            self.register_parameter(f"{name}_weight_scale", scale)
        weight.weight_loader = self.weight_loader
        if self.format != "dense":
            weight.accepts_quantized = True
            weight.low_bit_format = scale.low_bit_format = self.format
        return weight

    def scale_of(self, weight: nn.Parameter) -> nn.Parameter | None:
        """The scales stored beside a low-bit weight stack; None for dense experts."""
        name = "w13" if weight is self.w13_weight else "w2"
        suffix = {"fp8_block": "_weight_scale_inv", "fp4": "_weight_scale", "int8": "_weight_scale"}.get(self.format)
        return getattr(self, name + suffix) if suffix else None

    def expert_weights(self) -> ExpertWeights:
        from seekd.kernels.fused_moe import ExpertWeights

        return ExpertWeights(
            self.w13_weight, self.w2_weight, self.scale_of(self.w13_weight), self.scale_of(self.w2_weight), self.format
        )

    @property
    def graph_safe(self) -> bool:
        """Decode steps are capturable once they run the kernel: the loop reads the chosen expert ids
        on the host, and so does a hybrid layer's split."""
        return self.use_kernel and self.host is None

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor | QuantizedWeight, shard_id: tuple[int, str] | None = None
    ) -> None:
        """shard_id (expert, gate_proj|up_proj|down_proj) loads one expert's matrix; None loads the
        packed tensor of all experts (dense only). A hybrid layer sends each expert to its home stack,
        so host experts go from the checkpoint to host memory without visiting the device."""
        if self.ep_size > 1:
            self._load_own_experts(param, loaded, shard_id)
            return
        if self.homes is None:
            self._load_stack(param, loaded, shard_id)
            return
        name = "w13_weight" if param is self.w13_weight else "w2_weight"
        if shard_id is None:
            for stack, ids in ((self, self.homes.device_ids()), (self.host, self.homes.host_ids())):
                if ids:
                    stack._load_stack(getattr(stack, name), loaded[ids], None)
            return
        on_host, local = self.homes.home(shard_id[0])
        stack = self.host if on_host else self
        stack._load_stack(getattr(stack, name), loaded, (local, shard_id[1]))

    def _load_own_experts(
        self, param: nn.Parameter, loaded: torch.Tensor | QuantizedWeight, shard_id: tuple[int, str] | None
    ) -> None:
        """Expert parallelism: keep this rank's experts, whole, at their local index."""
        first, count = self.local_experts.start, len(self.local_experts)
        if shard_id is None:
            self._load_stack(param, loaded[first : first + count], None)
        elif shard_id[0] in self.local_experts:
            self._load_stack(param, loaded, (shard_id[0] - first, shard_id[1]))

    def _load_stack(
        self, param: nn.Parameter, loaded: torch.Tensor | QuantizedWeight, shard_id: tuple[int, str] | None
    ) -> None:
        size, start = self.intermediate_size, self.tp_rank * self.intermediate_size
        if shard_id is None:
            if self.format not in ("dense", "int8"):
                raise ValueError("low-bit experts load one expert's matrix at a time (DeepSeek's layout)")
            if self.format == "int8":
                for expert in range(loaded.shape[0]):
                    self._load_stack(param, loaded[expert], (expert, "down_proj" if param is self.w2_weight else ""))
                return
            if param is self.w2_weight:
                _copy(param.data, loaded.narrow(2, start, size))
            else:  # gate rows [0, I), up rows [I, 2I) of the full intermediate size I
                _copy(param.data[:, :size], loaded.narrow(1, start, size))
                _copy(param.data[:, size:], loaded.narrow(1, size * self.tp_size + start, size))
            return
        expert, part = shard_id
        if part == "down_proj":
            self._load_matrix(param, expert, 0, loaded, (1, start, size))
        elif part:
            self._load_matrix(param, expert, 0 if part == "gate_proj" else size, loaded, (0, start, size))
        else:  # one expert's packed gate and up rows [2I, H] (int8 rows quantize each row alone)
            self._load_matrix(param, expert, 0, loaded, (0, start, size))
            self._load_matrix(param, expert, size, loaded, (0, size * self.tp_size + start, size))

    def _load_matrix(
        self, param: nn.Parameter, expert: int, row: int, loaded: torch.Tensor | QuantizedWeight, src: tuple
    ) -> None:
        """The slice `src` = (dim, start, length) of one expert's checkpoint matrix into rows [row, ...)
        of that expert's stack entry, as codes and scales when low-bit."""
        dim, start, length = src
        if self.format in ("dense", "int8"):
            part = loaded.dequantize(torch.float32) if isinstance(loaded, QuantizedWeight) else loaded
            part = part.narrow(dim, start, length)
            if self.format == "int8":
                part, scale = quantize_int8_rows(part)
                _copy(self.scale_of(param).data[expert].narrow(0, row, part.shape[0]), scale)
            _copy(param.data[expert].narrow(0, row, part.shape[0]), part.to(param.dtype))
            return
        if not isinstance(loaded, QuantizedWeight):
            if self.format != "fp8_block":
                raise ValueError(f"{self.format} experts need an {self.format} checkpoint, got {loaded.dtype} weights")
            loaded = quantize_fp8_blocks(loaded.narrow(dim, start, length).to(param.device))
            dim, start, length = 0, 0, loaded.shape[0]
        elif loaded.format != self.format:
            raise ValueError(f"{loaded.format} expert weights cannot load into {self.format} experts")
        part = loaded.narrow(dim, start, length)
        rows = part.data.shape[0]
        scale_row = row // FP8_BLOCK if self.format == "fp8_block" else row
        _copy(param.data[expert].narrow(0, row, rows), part.data)
        _copy(self.scale_of(param).data[expert].narrow(0, scale_row, part.scale.shape[0]), part.scale)

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """x: [T, H], topk_weights/ids: [T, k] -> sum over each token's experts of weight * expert(x).
        The loop below is the reference; it reads the active experts back to the host, so the GPU fast
        path runs the fused kernel instead, which never syncs and can be captured in a CUDA graph."""
        if self.ep_size > 1:
            return self._expert_parallel(x, topk_weights, topk_ids)
        out = (
            self.local_forward(x, topk_weights, topk_ids)
            if self.host is None
            else self._hybrid(x, topk_weights, topk_ids)
        )
        return all_reduce(out, self.tp_size)

    def _expert_parallel(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """Every rank holds all tokens and their routing; each pair runs on its expert's rank
        (layers/expert_parallel.py says how the two dispatch modes move them)."""
        flat = topk_ids.flatten()
        self.expert_load.index_add_(0, flat, torch.ones_like(flat))
        if self.dispatch == "all_to_all":
            per_rank = len(self.local_experts)
            return all_to_all_experts(
                x, topk_weights, topk_ids, per_rank, self.ep_rank, self.ep_size, self.local_forward
            )
        out = self.local_forward(x, topk_weights, to_local_ids(topk_ids, self.local_experts), masked=True)
        return all_reduce(out, self.ep_size)

    def local_forward(
        self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, masked: bool = False
    ) -> torch.Tensor:
        """This stack's part of the sum, before the tensor-parallel all-reduce; ids are indexes into this
        stack, and a negative id marks a pair this stack does not hold (`masked`: there may be some)."""
        if self.use_kernel:
            return self._fused(x, topk_weights, topk_ids, masked or self.host is not None)
        out = torch.zeros_like(x)
        for expert in topk_ids.unique().tolist():
            if expert < 0:
                continue
            token_idx, slot = (topk_ids == expert).nonzero(as_tuple=True)
            y = self.expert_mlp(expert, x[token_idx])
            out.index_add_(0, token_idx, (y * topk_weights[token_idx, slot, None]).to(out.dtype))
        return out

    def _fused(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, masked: bool) -> torch.Tensor:
        from seekd.kernels.fused_moe import fused_moe

        if not masked:
            tiling = self.batch1_tiling if x.shape[0] == 1 else None
            return fused_moe(x, self.expert_weights(), topk_weights, topk_ids, self.swiglu_limit, tiling)
        # the pairs this stack holds (hybrid or expert-parallel), one row each: the kernel has no id for "not here"
        token, slot = (topk_ids >= 0).nonzero(as_tuple=True)
        out = torch.zeros_like(x)
        if token.numel():
            ids, weights = topk_ids[token, slot, None], topk_weights[token, slot, None]
            out.index_add_(0, token, fused_moe(x[token], self.expert_weights(), weights, ids, self.swiglu_limit))
        return out

    def _hybrid(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        """Launch the device experts' work, compute the host experts' on the CPU meanwhile, then add.
        Reading the routing to the host is the step's one sync; CUDA runs the launched work while this
        thread (and torch's CPU threads) work on the host experts."""
        device_ids, host_ids = self.homes.split(topk_ids.cpu())
        x_host, weights_host = x.cpu(), topk_weights.cpu()
        out = torch.zeros_like(x)
        if self.w13_weight.shape[0]:
            out = self.local_forward(x, topk_weights, device_ids.to(x.device, non_blocking=True))
        host_out = self.host.local_forward(x_host, weights_host, host_ids)
        return out + host_out.to(x.device, non_blocking=True)

    def expert_mlp(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """w2 @ swiglu(w13 @ x) of one expert of this stack, for x [M, H]."""
        if self.format == "int8":
            scales = self.w13_weight_scale[expert], self.w2_weight_scale[expert]
            gate, up = int8_rows_linear(x, self.w13_weight[expert], scales[0]).chunk(2, dim=-1)
            return int8_rows_linear(swiglu(gate, up, self.swiglu_limit), self.w2_weight[expert], scales[1])
        w13, w2 = self.dense_expert(expert, x.dtype)
        gate, up = F.linear(x, w13).chunk(2, dim=-1)
        return F.linear(swiglu(gate, up, self.swiglu_limit), w2)

    def dense_expert(self, expert: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(w13, w2) of one expert of this stack in `dtype`: the stored matrices, or the low-bit ones
        dequantized."""
        if self.format == "dense":
            return self.w13_weight[expert], self.w2_weight[expert]
        if self.format == "int8":
            return tuple(
                dequantize_int8_rows(w[expert], self.scale_of(w)[expert], dtype)
                for w in (self.w13_weight, self.w2_weight)
            )
        return tuple(
            QuantizedWeight(w[expert], self.scale_of(w)[expert], self.format).dequantize(dtype)
            for w in (self.w13_weight, self.w2_weight)
        )


def expert_format(wanted: str, hidden_size: int, inter: int) -> str:
    """`wanted` where this rank's [2I, H] and [H, I] matrices split on the format's scale boundaries."""
    if wanted == "fp8_block" and inter % FP8_BLOCK == 0:
        return wanted
    if wanted == "fp4" and inter % FP4_BLOCK == 0 and hidden_size % FP4_BLOCK == 0:
        return wanted
    return "dense"


def swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float | None = None) -> torch.Tensor:
    """silu(gate) * up, with V4's clipping when `limit` is set."""
    if limit is not None:
        gate, up = gate.clamp(max=limit), up.clamp(min=-limit, max=limit)
    return F.silu(gate) * up


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"expert checkpoint tensor has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
    dst.copy_(src)


class SparseMoE(nn.Module):
    """gate -> routed experts, plus shared experts that see every token."""

    def __init__(self, gate: TopKRouter, experts: RoutedExperts, shared_experts: nn.Module | None) -> None:
        super().__init__()
        self.gate = gate
        self.experts = experts
        self.shared_experts = shared_experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        topk_weights, topk_ids = self.gate(x)
        out = self.experts(x, topk_weights, topk_ids)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out
