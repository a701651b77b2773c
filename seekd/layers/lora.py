"""LoRA deltas on linear layers, with many adapters in one batch (multi-LoRA serving).

A LoRA layer keeps every device-resident adapter stacked by slot: A as [slots, R, in] and B as
[slots, out, R], the adapter's scaling (alpha / r) folded into B. Each step the runner says which
slot each row of the flat batch uses (`LoRABatch`: segments of consecutive rows sharing a slot,
-1 = the base model), and a projection adds x A[slot]^T B[slot]^T to its rows. The torch loop over
segments is the reference; on CUDA the segmented Triton kernels of seekd/kernels/lora.py run.

A fused layer (qkv, gate-up) gives each part its own band of `max_rank` rows of A and, in B, only
its part's output rows (block diagonal), so the delta is exactly the sum of the parts' deltas.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LoRABatch:
    """Which adapter slot each row of a step uses, as segments of consecutive rows."""

    seg_starts: torch.Tensor  # [S + 1] int32 on the device: segment s is rows seg_starts[s]:seg_starts[s+1]
    seg_slots: torch.Tensor  # [S] int32 on the device; -1 = the base model (no delta)
    max_seg_len: int  # rows of the longest segment: sizes the kernel grid
    num_rows: int
    segments: list[tuple[int, int, int]] = field(default_factory=list)  # host (start, end, slot), slot >= 0
    seq_slots: list[int] = field(default_factory=list)  # host: the slot of each sequence of the step
    slots: frozenset[int] = frozenset()  # the adapter slots the step uses
    graph: bool = False  # a CUDA-graph decode batch: persistent buffers, every layer launches its kernels


class LoRAState:
    """The step's LoRABatch, shared by every LoRA layer of one model. Projections are called from
    places that carry no forward context (MLPs, MLA's projections), so the runner sets the step's
    row -> adapter map here once per step, as vLLM's punica wrapper does. `batch` None: no row of
    the step uses an adapter, and every delta is skipped."""

    def __init__(self, use_kernel: bool) -> None:
        self.use_kernel = use_kernel  # segmented Triton kernels (CUDA) instead of the torch loop
        self.batch: LoRABatch | None = None


class LoRAWeights:
    """The stacked adapter weights of one linear layer (see the module docstring).

    `per_sequence`: the layer is also applied to rows that are not the step's tokens (MLA's kv_b_proj
    up-projects each sequence's cached latents), so the generic per-row delta is off and its caller
    adds each sequence's delta through `apply_slot`."""

    def __init__(
        self,
        state: LoRAState,
        num_slots: int,
        in_features: int,
        out_parts: list[int],
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
        per_sequence: bool = False,
    ) -> None:
        self.state = state
        self.in_features = in_features
        self.out_parts = out_parts
        self.max_rank = max_rank
        self.per_sequence = per_sequence
        rank = len(out_parts) * max_rank
        self.lora_a = torch.zeros(num_slots, rank, in_features, dtype=dtype, device=device)
        self.lora_b = torch.zeros(num_slots, sum(out_parts), rank, dtype=dtype, device=device)
        self.targeted_slots: set[int] = set()  # slots whose adapter has weights for this layer

    def set_slot(self, slot: int, parts: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Put an adapter into `slot`: per part index, (A [r, in], B [out_part, r] scaled)."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        for part, (a, b) in parts.items():
            r = a.shape[0]
            if r > self.max_rank:
                raise ValueError(f"adapter rank {r} exceeds max_lora_rank {self.max_rank}")
            if a.shape[1] != self.in_features or b.shape != (self.out_parts[part], r):
                raise ValueError(
                    f"adapter weights of shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit a projection "
                    f"of {self.in_features} inputs and {self.out_parts[part]} outputs"
                )
            band = part * self.max_rank
            row = sum(self.out_parts[:part])
            self.lora_a[slot, band : band + r].copy_(a)
            self.lora_b[slot, row : row + b.shape[0], band : band + r].copy_(b)
        if parts:
            self.targeted_slots.add(slot)
        else:
            self.targeted_slots.discard(slot)

    def active(self) -> bool:
        """Whether some row of this step uses an adapter with weights for this layer."""
        batch = self.state.batch
        return batch is not None and not batch.slots.isdisjoint(self.targeted_slots)

    def apply(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """out (= the base projection of x) plus each row's adapter delta, in place."""
        batch = self.state.batch
        if batch is None or self.per_sequence or not (batch.graph or self.active()):
            return out
        x2, out2 = x.reshape(-1, x.shape[-1]), out.view(-1, out.shape[-1])
        if x2.shape[0] != batch.num_rows:
            raise RuntimeError(f"a LoRA layer got {x2.shape[0]} rows; the step has {batch.num_rows}")
        if self.state.use_kernel:
            from seekd.kernels.lora import lora_expand, lora_shrink

            h = lora_shrink(x2, self.lora_a, batch.seg_starts, batch.seg_slots, batch.max_seg_len)
            lora_expand(h, self.lora_b, out2, batch.seg_starts, batch.seg_slots, batch.max_seg_len)
            return out
        for start, end, slot in batch.segments:
            if slot in self.targeted_slots:
                out2[start:end] += self._delta(x2[start:end], slot)
        return out

    def apply_slot(self, x: torch.Tensor, out: torch.Tensor, slot: int) -> torch.Tensor:
        """out + the delta of one slot's adapter for every row of x (-1 or an untargeted slot: out)."""
        if slot not in self.targeted_slots:
            return out
        return out + self._delta(x, slot)

    def _delta(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        """The reference: (x A^T) B^T in float32, rounded once to the output dtype."""
        h = x.float() @ self.lora_a[slot].float().T
        return (h @ self.lora_b[slot].float().T).to(x.dtype)
