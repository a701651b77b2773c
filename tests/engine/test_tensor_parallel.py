"""Tensor parallelism on the CPU (gloo, real worker processes): TP=2 generates exactly what TP=1 does,
a dead rank fails loudly in either direction, and sizes that do not split are refused up front."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import tp_child
from conftest import save_tiny_hf_model
from models.conftest import save_tiny_deepseek
from models.test_deepseek_v4 import save_tiny_v4
from models.test_deepseek_v32 import save_tiny_v32

from seekd import LLM
from seekd.engine.executor.tp_validation import check_tensor_parallel, valid_tp_sizes
from seekd.models.hf_config import HFConfig

CHILD = Path(tp_child.__file__)
CHILD_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tp-models")
    save_tiny_hf_model("qwen2", root / "qwen2")  # 4 heads, 2 KV heads
    save_tiny_deepseek("v3", root / "v3")  # MLA + MoE with a shared expert and a dense first layer
    save_tiny_v32(root / "v32", index_topk=4)  # sparse attention over the indexer's top 4
    save_tiny_v4(root / "v4")  # sliding / compressed attention, hash-routed MoE (attention replicated)
    dummy = root / "qwen2-dummy"
    dummy.mkdir()
    (dummy / "config.json").write_text((root / "qwen2" / "config.json").read_text())
    return {name: root / name for name in ("qwen2", "v3", "v32", "v4", "qwen2-dummy")}


def run_child(args: dict, timeout: float = CHILD_TIMEOUT_S) -> dict:
    proc = subprocess.run(
        [sys.executable, str(CHILD), json.dumps(args)], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not status.exists() or status.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize(
    ("model", "load_format", "async_scheduling", "kv_cache_dtype"),
    [
        ("qwen2", "auto", "off", "auto"),
        ("v3", "auto", "on", "auto"),  # async: rank 0 broadcasts sampled ids that the next step reads on the device
        ("v32", "auto", "off", "auto"),
        ("v4", "auto", "on", "auto"),
        ("qwen2-dummy", "dummy", "on", "auto"),  # random weights: each rank's shard of the one-rank model
        ("qwen2", "auto", "off", "fp8"),  # each rank quantizes its own KV heads
        ("v3", "auto", "off", "fp8"),  # every rank holds the whole FP8 latent cache
    ],
)
def test_tp2_greedy_output_matches_tp1(models, model, load_format, async_scheduling, kv_cache_dtype) -> None:
    args = {
        "model": str(models[model]),
        "load_format": load_format,
        "async_scheduling": async_scheduling,
        "kv_cache_dtype": kv_cache_dtype,
    }
    llm = tp_child.build({**args, "tp": 1})
    expected = tp_child.generate(llm)
    got = run_child({**args, "tp": 2})
    assert got["tokens"] == expected["tokens"]
    assert got["cached"] == expected["cached"]
    if model != "v4":  # V4 caches prefixes in 256-token units, longer than these prompts
        assert any(n > 0 for n in got["cached"][1]), "the second round should hit the prefix cache"
    assert len({tuple(t) for t in got["tokens"][0]}) == len(got["tokens"][0])


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("model", ["qwen2", "v3", "v32", "v4"])
def test_tp2_on_two_gpus_matches_tp1(models, model) -> None:
    """NCCL, triton attention, fused MoE, async scheduling; TP=1 replays decode CUDA graphs, TP=2 runs eagerly."""
    args = {"model": str(models[model]), "device": "cuda", "async_scheduling": "auto"}
    expected = run_child({**args, "tp": 1})
    got = run_child({**args, "tp": 2})
    assert got == expected


def test_killed_worker_fails_the_engine_with_a_clear_error(models) -> None:
    got = run_child({"model": str(models["qwen2"]), "tp": 2, "mode": "kill_worker"})
    assert got["error"] is not None
    assert got["error"].startswith("TPWorkerError: tensor-parallel worker rank 1")
    assert "exited with code -9" in got["error"]


def test_worker_exits_when_rank0_dies(models) -> None:
    args = {"model": str(models["qwen2"]), "tp": 2, "mode": "wait"}
    proc = subprocess.Popen([sys.executable, str(CHILD), json.dumps(args)], stdout=subprocess.PIPE, text=True)
    try:
        worker = json.loads(proc.stdout.readline())["worker"]
        assert pid_alive(worker)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while pid_alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pid_alive(worker), "the worker outlived rank 0"
    finally:
        proc.kill()
        proc.wait()


def test_indivisible_sizes_are_refused_with_the_sizes_that_work(models) -> None:
    with pytest.raises(
        ValueError,
        match=r"tensor_parallel_size=3 does not divide this model's "
        r"num_attention_heads=4.*sizes that work: 1, 2, 4",
    ):
        LLM(str(models["qwen2"]), tensor_parallel_size=3, num_kv_blocks=64, show_progress=False)
    qwen2 = HFConfig.from_folder(models["qwen2"])
    with pytest.raises(ValueError, match="num_key_value_heads=2"):
        check_tensor_parallel(HFConfig({**qwen2.to_dict(), "num_attention_heads": 12}), 3, "cpu", 0)
    v3 = HFConfig.from_folder(models["v3"])
    assert valid_tp_sizes(v3) == [1, 2, 4]  # 4 heads; moe_intermediate_size 32, intermediate 128
    with pytest.raises(ValueError, match=r"moe_intermediate_size=36"):
        check_tensor_parallel(HFConfig({**v3.to_dict(), "moe_intermediate_size": 36}), 8, "cpu", 0)


def test_more_ranks_than_gpus_is_refused(models) -> None:
    qwen2 = HFConfig.from_folder(models["qwen2"])
    with pytest.raises(ValueError, match=r"needs GPUs 0..3, but 2 GPU\(s\) are visible"):
        check_tensor_parallel(qwen2, 4, "cuda", 2)
    with pytest.raises(ValueError, match=r"needs GPUs 1..2"):
        check_tensor_parallel(qwen2, 2, "cuda:1", 2)
    check_tensor_parallel(qwen2, 2, "cuda:0", 2)
