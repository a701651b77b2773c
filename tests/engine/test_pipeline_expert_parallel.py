"""Pipeline and expert parallelism on the CPU (gloo, real worker processes): TP x PP, EP and
TP x PP x EP on tiny V3, V3.2 and V4 give the one-rank greedy tokens through chunked prefill, prefix
hits and preemption; a killed stage fails the engine loudly; the layout checks refuse what cannot
split; a stage builds and caches only its own layers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tp_child
from models.conftest import save_tiny_deepseek
from models.test_deepseek_v4 import save_tiny_v4
from models.test_deepseek_v32 import save_tiny_v32

from seekd import distributed
from seekd.config import ParallelConfig
from seekd.engine.engine_core import expert_load_stats
from seekd.engine.executor.tp_validation import check_parallel
from seekd.engine.kv_cache_layout import KVCacheLayout
from seekd.layers.pipeline import RemoteLayer, stage_layer_range
from seekd.models.hf_config import HFConfig
from seekd.models.loader import load_model, stage_filter

CHILD = Path(tp_child.__file__)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pp-ep-models")
    save_tiny_deepseek("v3", root / "v3")  # 3 layers: dense, then MoE (8 experts, top 2, shared expert)
    save_tiny_v32(root / "v32", index_topk=4)  # 2 layers: dense, then MoE
    save_tiny_v4(root / "v4")  # 4 layers: sliding, CSA, HCA, CSA; hash-routed first two
    return {name: root / name for name in ("v3", "v32", "v4")}


def run_child(args: dict, timeout: float = 180) -> dict:
    proc = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(args)], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("model", "layout", "options"),
    [
        ("v3", {"pp": 2}, {"num_kv_blocks": 10, "async_scheduling": "on"}),  # preempts; sampled ids broadcast
        ("v32", {"pp": 2}, {}),
        ("v4", {"pp": 2}, {"async_scheduling": "on"}),  # mHC streams between the stages
        ("v3", {"tp": 2, "ep": True, "dispatch": "all_reduce"}, {"load_format": "dummy"}),  # whole experts drawn
        ("v32", {"tp": 2, "ep": True, "dispatch": "all_to_all"}, {}),
        ("v4", {"tp": 2, "ep": True, "dispatch": "all_to_all"}, {}),  # hash routing dispatched too
        ("v3", {"tp": 2, "pp": 2, "ep": True, "dispatch": "all_to_all"}, {"num_kv_blocks": 10}),
        ("v4", {"tp": 2, "pp": 2, "ep": True, "dispatch": "all_reduce"}, {"async_scheduling": "on"}),
    ],
    ids=lambda v: "-".join(f"{k}{v[k]}" for k in v) if isinstance(v, dict) else v,
)
def test_parallel_layout_gives_the_one_rank_greedy_tokens(models, model, layout, options) -> None:
    args = {"model": str(models[model]), **options}
    expected = tp_child.generate(tp_child.build({**args, "tp": 1}))
    got = run_child({"tp": 1, **args, **layout})
    assert got["tokens"] == expected["tokens"]
    assert got["cached"] == expected["cached"]
    if model != "v4":  # V4 caches prefixes in 256-token units, longer than these prompts
        assert any(n > 0 for n in got["cached"][1]), "the second round should hit the prefix cache"
    if "num_kv_blocks" in options:
        assert got["preemptions"] == expected["preemptions"] > 0
    if layout.get("ep"):
        assert got["expert_tokens"] > 0, "expert-parallel layers count their pairs"
    assert len({tuple(t) for t in got["tokens"][0]}) == len(got["tokens"][0])


def test_killed_pipeline_stage_fails_the_engine_with_a_clear_error(models) -> None:
    got = run_child({"model": str(models["v3"]), "tp": 1, "pp": 2, "mode": "kill_worker"})
    assert got["error"] is not None
    assert got["error"].startswith("TPWorkerError: tensor-parallel worker rank 1")
    assert "exited with code -9" in got["error"]


def test_stage_layer_ranges_cover_every_layer_once() -> None:
    assert [stage_layer_range(61, s, 4) for s in range(4)] == [
        range(0, 16),
        range(16, 31),
        range(31, 46),
        range(46, 61),
    ]
    assert [stage_layer_range(3, s, 2) for s in range(2)] == [range(0, 2), range(2, 3)]


@pytest.fixture
def second_stage(monkeypatch):
    """Layers built inside see the last of two pipeline stages (one rank each, no process group needed)."""
    monkeypatch.setattr(distributed, "_ranks", distributed.ParallelRanks(0, 1, 1, 2, False, None))


def test_a_stage_holds_and_caches_only_its_layers(models, second_stage) -> None:
    hf_config = HFConfig.from_folder(models["v4"])
    stage = load_model(models["v4"], hf_config, device="cpu", dtype=torch.float32, load_format="auto")
    assert list(stage.stage) == [2, 3]
    assert [isinstance(layer, RemoteLayer) for layer in stage.layers] == [True, True, False, False]
    assert isinstance(stage.embed, RemoteLayer) and not isinstance(stage.head, RemoteLayer)
    assert not any(name.startswith(("layers.0.", "layers.1.", "embed.")) for name, _ in stage.named_parameters())
    keep = stage_filter(stage)  # the stage reads only its layers' tensors from the checkpoint
    assert keep("layers.2.attn.wq_a.weight") and keep("model.layers.3.ffn.gate.weight") and keep("head.weight")
    assert not keep("layers.1.attn.wq_a.weight") and not keep("model.layers.0.ffn.gate.weight")
    with distributed.single_rank_view():
        whole = load_model(models["v4"], hf_config, device="cpu", dtype=torch.float32, load_format="dummy")
    full = KVCacheLayout(whole.attention_layers(), torch.float32, 16)
    part = KVCacheLayout(stage.attention_layers(), torch.float32, 16)
    assert part.shapes == full.shapes, "every stage plans the same groups and block sizes"
    assert part.page_bytes <= full.page_bytes

    def cache_bytes(layout: KVCacheLayout) -> int:
        return sum(g.member_bytes(spec) for g in layout.groups for _, _, spec in g.local_members)

    assert cache_bytes(part) < cache_bytes(full)
    part.allocate(4, torch.device("cpu"))
    bound = [bool(layer.kv_caches) for layer in stage.attention_layers()]
    assert bound == [False, False, True, True]


def test_layouts_that_do_not_split_are_refused(models) -> None:
    v3 = HFConfig.from_folder(models["v3"])
    with pytest.raises(ValueError, match="pipeline_parallel_size=4 is more stages than this model's 3 layers"):
        check_parallel(v3, ParallelConfig(pipeline_parallel_size=4), "cpu", 0)
    with pytest.raises(
        ValueError, match=r"does not divide this model.s .*n_routed_experts=8.*sizes that work: 1, 2, 4"
    ):
        check_parallel(
            HFConfig({**v3.to_dict(), "num_attention_heads": 12}),
            ParallelConfig(tensor_parallel_size=3, enable_expert_parallel=True),
            "cpu",
            0,
        )
    # whole experts: the expert intermediate size no longer splits, so 36 is fine at 4 ranks
    ep4 = ParallelConfig(tensor_parallel_size=4, enable_expert_parallel=True)
    check_parallel(HFConfig({**v3.to_dict(), "moe_intermediate_size": 36}), ep4, "cpu", 0)
    qwen2 = HFConfig({**v3.to_dict(), "architectures": ["Qwen2ForCausalLM"], "n_routed_experts": None})
    with pytest.raises(ValueError, match="no routed experts to place"):
        check_parallel(qwen2, ParallelConfig(tensor_parallel_size=2, enable_expert_parallel=True), "cpu", 0)
    with pytest.raises(ValueError, match="Qwen2ForCausalLM does not run in pipeline stages yet"):
        check_parallel(qwen2, ParallelConfig(pipeline_parallel_size=2), "cpu", 0)
    with pytest.raises(ValueError, match=r"4 parallel ranks .* needs GPUs 0..3, but 2 GPU\(s\) are visible"):
        check_parallel(v3, ParallelConfig(tensor_parallel_size=2, pipeline_parallel_size=2), "cuda", 2)


def test_expert_load_stats_sum_layers_and_rate_each_layers_balance() -> None:
    table = np.array([[0, 0, 0, 0], [4, 4, 4, 4], [8, 0, 0, 0]])
    stats = expert_load_stats(table)
    assert [stats[f"expert_tokens:{e}"] for e in range(4)] == [12.0, 4.0, 4.0, 4.0]
    assert stats["expert_imbalance:1"] == 1.0 and stats["expert_imbalance:2"] == 4.0
    assert "expert_imbalance:0" not in stats  # a dense layer
    assert expert_load_stats(None) == {}
