"""The fused MoE benchmark runs end to end (tiny shape, CPU through Triton's interpreter) and writes
what the lead reads from its GPU run: per case (format and token count) the loop and kernel timings,
the bytes the experts read, the kernel's deviation from the loop, and the run's metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "fused_moe.py"


@pytest.mark.triton
def test_tiny_run_reports_every_case_against_the_loop(tmp_path: Path) -> None:
    out = tmp_path / "fused_moe.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--tiny",
        "--device",
        "cpu",
        "--tokens",
        "1",
        "3",
        "--reps",
        "1",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert {"device", "commit", "command", "date"} <= result.keys() and result["interpreted"]
    assert result["formats"] == ["dense", "fp8_block", "fp4"] and result["dtype"] == "float32"
    cases = [(r["shape"], r["format"], r["tokens"]) for r in result["results"]]
    assert cases == [("tiny", f, t) for f in result["formats"] for t in (1, 3)]
    for r in result["results"]:
        assert r["loop_ms"] > 0 and r["kernel_ms"] > 0 and 1 <= r["active_experts"] <= 2 * r["tokens"]
        assert r["max_abs_diff_vs_loop"] < 1e-4
    # bytes per weight: 4 in float32, 1 in FP8 (plus a float per 128x128 block), 1/2 in FP4 (plus a byte per 32)
    per_weight = {r["format"]: r["weight_bytes"] / (r["active_experts"] * 3 * 64 * 32) for r in result["results"]}
    assert per_weight["dense"] == 4.0 and 1 < per_weight["fp8_block"] < 1.01 and per_weight["fp4"] == 0.5 + 1 / 32
