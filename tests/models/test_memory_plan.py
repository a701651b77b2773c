"""Weight memory per GPU, counted from the layers seekd builds: the README's table of full-size
DeepSeeks is pinned here, and a loaded low-bit checkpoint occupies what its files hold."""

from __future__ import annotations

import pytest

from seekd.models.hf_config import HFConfig
from seekd.models.memory_plan import fitting_advice, plan
from seekd.models.published_configs import FULL_SIZE, V3

# GiB of weights on each GPU at tensor-parallel size 8: (shipped precision, all bf16); README.md shows them
README_TP8_GIB = {
    "DeepSeek-R1 / V3": (79.6, 158.2),
    "DeepSeek-V3.2": (80.4, 159.7),
    "DeepSeek-V4-Flash": (24.1, 75.0),
    "DeepSeek-V4-Pro": (119.7, 399.1),
}


@pytest.mark.parametrize("name", list(FULL_SIZE))
def test_full_size_models_per_gpu_at_tp8_match_the_readme(name):
    by_precision = {p.precision: round(p.gib_per_gpu, 1) for p in plan(HFConfig(FULL_SIZE[name]), (8,))}
    assert (by_precision["shipped"], by_precision["bf16"]) == README_TP8_GIB[name]


def test_r1_in_block_fp8_is_its_checkpoint_size_and_half_of_bf16():
    """R1/V3's checkpoint is 671B weights (MTP excluded) at about one byte each plus 128x128 scales."""
    one_gpu = {p.precision: p.bytes_per_gpu for p in plan(HFConfig(V3), (1,))}
    assert one_gpu["shipped"] / 1e9 == pytest.approx(674.4, rel=0.001)
    assert one_gpu["bf16"] / one_gpu["shipped"] == pytest.approx(2.0, rel=0.01)


def test_does_not_fit_advice_names_the_precision_and_parallel_size():
    h100 = 80 * 10**9
    assert "--tensor-parallel-size 4 in shipped precision" in fitting_advice(
        HFConfig(FULL_SIZE["DeepSeek-V4-Flash"]), h100, 0.9
    )
    assert "pipeline parallel" in fitting_advice(HFConfig(V3), h100, 0.9)  # 80 GiB a GPU at TP 8: too much
