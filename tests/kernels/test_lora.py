"""The segmented LoRA kernels against the torch reference of seekd/layers/lora.py: segments of
several adapters, base segments, decode rows (one per segment) and fused layers of several parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_env import BF16_TILES, INTERPRETED

from seekd.layers.lora import LoRAState, LoRAWeights

pytestmark = pytest.mark.triton


def build(device: str, dtype: torch.dtype, in_features: int, parts: list[int], rank: int, slots: int) -> LoRAWeights:
    torch.manual_seed(0)
    state = LoRAState(use_kernel=False)
    layer = LoRAWeights(state, slots, in_features, parts, rank, dtype, torch.device(device))
    for slot in range(slots):
        r = rank - slot % 2  # ranks below the maximum leave zero rows in the band
        layer.set_slot(
            slot,
            {p: (torch.randn(r, in_features) / in_features**0.5, torch.randn(n, r) * 0.5) for p, n in enumerate(parts)},
        )
    return layer


def set_batch(layer: LoRAWeights, seq_slots: list[int], query_lens: list[int], device: str) -> None:
    from seekd.engine.lora_manager import LoRAManager

    manager = LoRAManager.__new__(LoRAManager)  # only set_batch: no model needed
    manager.state, manager.device = layer.state, torch.device(device)
    manager.set_batch(np.asarray(seq_slots, dtype=np.int32), query_lens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "in_features,parts,seq_slots,query_lens",
    [
        (96, [80], [0, -1, 2, 2, 1], [5, 3, 17, 1, 40]),  # prefill segments, a base one, merged runs
        (64, [64, 16, 16], [1, 0, -1, 2, 1, 0], [1, 1, 1, 1, 1, 1]),  # decode rows of a fused qkv
        (200, [120, 120], [3, 3, 3], [33, 2, 1]),  # one adapter, gate-up parts, K beyond one tile
    ],
)
def test_segmented_kernels_equal_the_torch_reference(kernel_device, dtype, in_features, parts, seq_slots, query_lens):
    if dtype == torch.bfloat16 and INTERPRETED:
        pytest.skip(BF16_TILES)
    layer = build(kernel_device, dtype, in_features, parts, rank=8, slots=4)
    set_batch(layer, seq_slots, query_lens, kernel_device)
    x = torch.randn(sum(query_lens), in_features, device=kernel_device, dtype=dtype)
    base = torch.randn(sum(query_lens), sum(parts), device=kernel_device, dtype=dtype)
    ref = layer.apply(x, base.clone())
    layer.state.use_kernel = True
    out = layer.apply(x, base.clone())
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(out, ref, **tol)
    row_slots = np.repeat(seq_slots, query_lens)
    rows = torch.from_numpy(np.flatnonzero(row_slots < 0)).to(kernel_device)
    assert torch.equal(out[rows], base[rows])  # base rows are untouched
    assert not torch.allclose(ref, base)  # the adapters do change the adapted rows
