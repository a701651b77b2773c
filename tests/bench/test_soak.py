"""A short `seekd bench soak` on the demo model, as a user runs it: it starts `seekd serve`, kills the
engine core once mid-load, and passes with a result that holds the time series."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seekd.bench.model_folder import public_shape, write_model_folder

pytestmark = pytest.mark.slow

SERIES_FIELDS = ("api_rss_mib", "api_fds", "engine_rss_mib", "engine_fds", "kv_usage", "running", "waiting")


def test_short_soak_with_one_engine_kill_passes_and_records_the_series(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    command = [
        sys.executable, "-m", "seekd.cli", "bench", "soak",
        "--duration", "20s", "--active", "6", "--idle", "2", "--kill-every", "15",
        "--concurrency", "3", "--burst", "4", "--max-tokens", "12", "--long-prompt-tokens", "800",
        "--sample-interval", "1", "--window", "5", "--warmup", "4",
        "--data-dir", str(tmp_path / "data"), "--server-log", str(tmp_path / "server.log"), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "soak PASSED" in proc.stdout

    result = json.loads(out.read_text())
    assert {"benchmark", "device", "commit", "date", "command"} <= result.keys()
    assert result["benchmark"] == "soak" and result["command"].startswith("seekd bench soak --duration 20s")
    assert result["passed"] and all(c["passed"] for c in result["checks"])

    (kill,) = result["kills"]
    assert kill["client_in_flight"] > 0 and kill["restart_s"] is not None and kill["new_pid"] != kill["pid"]
    assert result["final_health"]["engine_restarts"] == 1

    samples = result["samples"]
    assert len(samples) >= 10
    assert all(s[f] is not None for s in samples if s["error"] is None for f in SERIES_FIELDS)
    assert {s["engine_pid"] for s in samples} == {kill["pid"], kill["new_pid"]}  # the series spans the restart
    assert max(s["kv_usage"] for s in samples if s["kv_usage"] is not None) > 0  # KV was used under load ...
    assert all(s["kv_usage"] == 0 and s["settled"] for s in result["idle_samples"])  # ... and freed when idle

    windows = result["windows"]
    assert len(windows) >= 4 and sum(w["requests"] for w in windows) == result["totals"]["requests"]
    assert any(w["ttft_ms"]["p50"] is not None and w["e2e_ms"]["p99"] is not None for w in windows)
    totals = result["totals"]
    assert totals["ok"] > 0 and totals["lost"] == 0
    assert len(totals["by_kind"]) >= 4  # the mix, not one kind of request
    assert result["server_log"]["tracebacks"] == 0


def test_public_shape_folder_serves_the_whole_mix(tmp_path: Path) -> None:
    """The folder `--shape` builds for the GPU soak (DeepSeek's tokenizer, the chat template, a
    vocabulary larger than the tokenizer's), here with the 7B shape's dims shrunk to run on a CPU."""
    shape = public_shape("r1-distill-qwen-7b")
    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    small |= {"num_key_value_heads": 2, "max_position_embeddings": 4096, "torch_dtype": "float32"}
    folder = write_model_folder(tmp_path / "model", {**shape, **small})
    out = tmp_path / "soak.json"
    command = [
        sys.executable, "-m", "seekd.cli", "bench", "soak",
        "--duration", "10s", "--active", "5", "--idle", "1", "--kill-every", "0",
        "--concurrency", "3", "--burst", "3", "--max-tokens", "8", "--long-prompt-tokens", "500",
        "--model", str(folder), "--serve-args", "--load-format dummy --max-model-len 2048",
        "--data-dir", str(tmp_path / "data"), "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["passed"] and result["kills"] == [] and result["totals"]["ok"] > 0
    assert "--load-format dummy" in result["server"]["command"]
    kinds = result["totals"]["by_kind"]
    assert kinds.get("chat_stream", {}).get("ok") and kinds.get("completion_stream", {}).get("ok")
