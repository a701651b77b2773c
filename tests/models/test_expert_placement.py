"""Which routed experts go to host memory: --cpu-experts N, auto within the memory plan's GPU budget
(most-used first with a routing profile), a placement file, and the bytes left on the GPU."""

from __future__ import annotations

import json

import pytest
import torch

from seekd.layers.quantization import FP8_BLOCK
from seekd.models.expert_placement import ModelSplit, MoELayerSize, model_split, plan_expert_placement
from seekd.models.hf_config import HFConfig
from seekd.models.memory_plan import shipped_quant_config, weight_budget, weight_bytes_per_gpu
from seekd.models.published_configs import V3

GIB = 2**30
SMALL = ModelSplit((MoELayerSize(1, 8, 100), MoELayerSize(2, 8, 100), MoELayerSize(4, 8, 100)), other_bytes=1000)


def plan(split: ModelSplit = SMALL, **kw):
    return plan_expert_placement(split, host_format="checkpoint", **{"cpu_experts": "0", **kw})


def test_r1_split_counts_every_fp8_expert_and_the_rest_of_the_model():
    hf_config = HFConfig(V3)
    quant = shipped_quant_config(hf_config)
    split = model_split(hf_config, quant, 1, torch.bfloat16)
    assert [m.layer for m in split.moe_layers] == list(range(3, 61))  # three dense layers, then 58 MoE
    hidden, inter = 7168, 2048
    scales = (2 * inter // FP8_BLOCK) * (hidden // FP8_BLOCK) + (hidden // FP8_BLOCK) * (inter // FP8_BLOCK)
    assert {m.expert_bytes for m in split.moe_layers} == {3 * hidden * inter + 4 * scales}
    assert split.other_bytes + split.expert_bytes == weight_bytes_per_gpu(hf_config, quant, 1)


def test_n_per_layer_puts_the_highest_ids_or_the_least_used_on_the_host(tmp_path):
    assert plan().num_host_experts == 0
    placement = plan(cpu_experts="3")
    assert dict(placement.host_experts) == {layer: frozenset({5, 6, 7}) for layer in (1, 2, 4)}
    counts = {"1": [9, 0, 5, 5, 5, 5, 5, 1], "2": [1] * 8, "4": [0] * 7 + [50]}
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"layers": counts}))
    placement = plan(cpu_experts="3", routing_profile=str(profile))
    assert placement.on_host(1) == {1, 7, 6}  # least used; the tie among the fives broken by id
    assert placement.on_host(2) == {5, 6, 7}
    assert 7 not in placement.on_host(4)
    with pytest.raises(ValueError, match="only 8 routed experts"):
        plan(cpu_experts="9")


def test_auto_fills_the_gpu_budget_first_spread_over_layers():
    placement = plan(cpu_experts="auto", gpu_weight_budget=1000 + 7 * 100 + 50)  # room for seven experts
    on_gpu = {layer: set(range(8)) - placement.on_host(layer) for layer in (1, 2, 4)}
    assert on_gpu == {1: {0, 1, 2}, 2: {0, 1}, 4: {0, 1}}
    assert plan(cpu_experts="auto", gpu_weight_budget=10**9).num_host_experts == 0
    assert plan(cpu_experts="auto", gpu_weight_budget=1000).num_host_experts == 24
    assert plan(cpu_experts="auto", gpu_weight_budget=None).num_host_experts == 0  # no GPU to fill
    with pytest.raises(ValueError, match="even with every routed expert in host memory"):
        plan(cpu_experts="auto", gpu_weight_budget=999)


def test_auto_with_a_profile_keeps_the_most_used_experts_of_any_layer_on_the_gpu(tmp_path):
    profile = tmp_path / "profile.json"
    # layer 4 routes almost everything to experts 6 and 7; layers 1 and 2 are flat
    profile.write_text(json.dumps({"layers": {"1": [1] * 8, "2": [1] * 8, "4": [0] * 6 + [10, 30]}}))
    placement = plan(cpu_experts="auto", gpu_weight_budget=1000 + 3 * 100, routing_profile=str(profile))
    assert set(range(8)) - placement.on_host(4) == {6, 7}
    assert set(range(8)) - placement.on_host(1) == {0}  # the third slot: the flat layers' first expert
    assert placement.on_host(2) == set(range(8))


def test_placement_file_names_host_experts_and_bad_files_say_what_is_wrong(tmp_path):
    path = tmp_path / "placement.json"
    path.write_text(json.dumps({"layers": {"2": [0, 3]}}))
    placement = plan(cpu_experts="auto", placement_file=str(path))
    assert dict(placement.host_experts) == {2: frozenset({0, 3})}
    for bad, message in (
        ({"layers": {"3": [0]}}, "not an MoE layer"),
        ({"layers": {"2": [8]}}, "experts 0..7"),
        ([1, 2], "must hold"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            plan(placement_file=str(path))


def test_r1_on_one_80_gib_gpu_keeps_most_routed_experts_in_host_ram():
    """The README's sizing: R1 in FP8 with auto placement on an 80 GiB GPU."""
    hf_config = HFConfig(V3)
    quant = shipped_quant_config(hf_config)
    split = model_split(hf_config, quant, 1, torch.bfloat16)
    budget = weight_budget(80 * GIB, 0.9)
    placement = plan(split, cpu_experts="auto", gpu_weight_budget=budget)
    on_gpu = weight_bytes_per_gpu(hf_config, quant, 1, placement=placement)
    assert on_gpu <= budget < on_gpu + split.moe_layers[0].expert_bytes
    total = 58 * 256
    assert 0.9 < placement.num_host_experts / total < 0.95
