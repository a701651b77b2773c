"""Cache groups over one pool of equal pages: block sizes per group, and an arena in which the layers
of the group that owns a page never overlap."""

from __future__ import annotations

import torch
from torch import nn

from seekd.engine.kv_cache_layout import KVCacheLayout
from seekd.layers.attention import Attention, KVCacheSpec
from seekd.layers.kv_quant import FP8


class OneKind(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.kv_cache: torch.Tensor | None = None

    def kv_cache_spec(self, dtype: torch.dtype, fp8: bool = False) -> KVCacheSpec:
        return KVCacheSpec((self.width,), FP8, scale_shape=(2,)) if fp8 else KVCacheSpec((self.width,), dtype)


class ThreeKinds(nn.Module):
    """Like a V4 compressed layer: window keys, window states, compressed entries (rate 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.kv_caches: dict[str, torch.Tensor] = {}
        self.kv_scales: dict[str, torch.Tensor] = {}

    def kv_cache_specs(self, dtype: torch.dtype, fp8: bool = False) -> dict[str, KVCacheSpec]:
        """With fp8, the window keys and the entries are FP8 (scales of 1 and 2 parts); states are not."""
        if fp8:
            return {
                "kv": KVCacheSpec((32,), FP8, "window", 1, 8, (1,)),
                "state": KVCacheSpec((96,), dtype, "state", 1, 8),
                "entries": KVCacheSpec((48,), FP8, "entries", 4, None, (2,)),
            }
        return {
            "kv": KVCacheSpec((32,), dtype, "window", 1, 8),
            "state": KVCacheSpec((96,), dtype, "state", 1, 8),
            "entries": KVCacheSpec((48,), dtype, "entries", 4),
        }


def test_single_group_keeps_contiguous_per_layer_tensors_of_block_size_tokens():
    layers = [OneKind(16), OneKind(16)]
    layout = KVCacheLayout(layers, torch.float32, 8)
    assert [(s.name, s.block_tokens) for s in layout.shapes] == [("full", 8)]
    assert layout.page_bytes == 2 * 8 * 16 * 4 and layout.hit_granularity == 8
    layout.allocate(5, torch.device("cpu"))
    assert all(layer.kv_cache.shape == (5, 8, 16) and layer.kv_cache.is_contiguous() for layer in layers)


def test_kinds_of_one_lifetime_share_a_group_and_groups_get_pages_of_nearly_equal_bytes():
    layers = [ThreeKinds(), ThreeKinds(), OneKind(32)]
    layout = KVCacheLayout(layers, torch.float32, 4)
    groups = {g.shape.name: g for g in layout.groups}
    assert {name: sorted(g.kinds) for name, g in groups.items()} == {
        "window_8": ["state", "window"],
        "full": ["entries", "kv"],
    }
    # window_8's smallest block (4 tokens x 2 layers x (32 + 96) floats) sets the page; the full group
    # (4 tokens: 2 x one 48-float entry + 4 x 32 floats) takes 4 of its smallest blocks per page
    assert layout.page_bytes == 4 * 2 * 128 * 4
    assert {name: (g.shape.block_tokens, g.bytes_per_block) for name, g in groups.items()} == {
        "window_8": (4, 4096),
        "full": (16, 4 * (2 * 48 + 4 * 32) * 4),
    }
    assert layout.hit_granularity == 16
    layout.allocate(6, torch.device("cpu"))
    # a page belongs to one group at a time: give group g block g + 1 and fill each layer's part of it
    owned = []
    for g, group in enumerate(layout.groups):
        for layer, name, _ in group.members:
            view = layer.kv_caches[name] if hasattr(layer, "kv_caches") else layer.kv_cache
            owned.append((view, g + 1, len(owned) + 1))
            view[g + 1] = len(owned)
    for view, block, value in owned:
        assert bool((view[block] == value).all()), f"a layer's part of block {block} was overwritten"
    window = layers[0].kv_caches["kv"]
    assert window.shape == (6, 4, 32) and not window.is_contiguous()
    assert layers[0].kv_caches["entries"].shape == (6, 4, 48)
    window[torch.tensor([3]), torch.tensor([2])] = 0.5  # (block, offset) writes reach the arena
    assert layers[0].kv_caches["kv"][3, 2, 0].item() == 0.5


def test_sliding_groups_bound_the_blocks_a_long_sequence_holds():
    layout = KVCacheLayout([ThreeKinds()], torch.float32, 4)
    short, long = layout.blocks_for_tokens(64, chunk=16), layout.blocks_for_tokens(4096, chunk=16)
    full = next(s for s in layout.shapes if s.sliding_window is None)
    # only the entries grow with the context; the window group holds at most a window + chunk
    assert long - short == -(-4096 // full.block_tokens) - -(-64 // full.block_tokens)
    assert layout.max_tokens(long, chunk=16) >= 4096


def test_fp8_pages_count_codes_and_scales_and_hold_about_twice_the_tokens():
    """A 7B-shaped GQA layer (4 KV heads of 128): 2 x 4 x 128 code bytes + 2 x 4 float32 scales per
    token against 2 x 4 x 128 bf16 values, so the same memory holds 1.94x the blocks."""
    layers = [Attention(28, 128, 128**-0.5, 4) for _ in range(2)]
    bf16 = KVCacheLayout(layers, torch.bfloat16, 16)
    fp8 = KVCacheLayout(layers, torch.bfloat16, 16, fp8=True)
    assert bf16.page_bytes == 2 * 16 * 2 * 4 * 128 * 2
    assert fp8.page_bytes == 2 * 16 * (2 * 4 * 128 + 2 * 4 * 4)
    assert bf16.page_bytes / fp8.page_bytes > 1.93
    fp8.allocate(3, torch.device("cpu"))
    for layer in layers:
        assert layer.kv_cache.dtype == FP8 and layer.kv_cache.shape == (3, 16, 2, 4, 128)
        assert layer.kv_scales.dtype == torch.float32 and layer.kv_scales.shape == (3, 16, 2, 4, 1)
    fp8.release()
    assert all(layer.kv_cache is None and layer.kv_scales is None for layer in layers)


def test_fp8_kinds_in_the_arena_keep_codes_and_scales_apart_from_every_other_member():
    layers = [ThreeKinds(), ThreeKinds(), OneKind(32)]
    layout = KVCacheLayout(layers, torch.float32, 4, fp8=True)
    groups = {g.shape.name: g for g in layout.groups}
    assert {kind: spec.dtype for kind, spec in groups["window_8"].kinds.items()} == {
        "window": FP8,
        "state": torch.float32,
    }
    layout.allocate(6, torch.device("cpu"))
    views = []  # (view, block of its group): a page belongs to one group at a time
    for g, group in enumerate(layout.groups):
        for layer, name, spec in group.members:
            multi = hasattr(layer, "kv_caches")
            views.append((layer.kv_caches[name] if multi else layer.kv_cache, g + 1))
            if spec.scale_shape is not None:
                scales = layer.kv_scales[name] if multi else layer.kv_scales
                assert scales.shape == (6, group.entries_per_block(spec), *spec.scale_shape)
                views.append((scales, g + 1))
    for i, (view, block) in enumerate(views):  # every member's codes, scales and values, in turn
        view.view(torch.uint8)[block] = i + 1
    for i, (view, block) in enumerate(views):
        assert bool((view.view(torch.uint8)[block] == i + 1).all()), f"view {i} was overwritten"
    assert layers[0].kv_caches["entries"].dtype == FP8 and layers[0].kv_scales["entries"].shape[-1] == 2
