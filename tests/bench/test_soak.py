"""A short `seekd bench soak` on the demo model, as a user runs it: it starts `seekd serve`, kills the
engine core once mid-load, and passes with a result that holds the time series."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
