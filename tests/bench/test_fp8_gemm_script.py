"""The block-FP8 GEMM benchmark runs end to end (tiny shapes, CPU through Triton's interpreter) and writes
what the lead reads from its GPU run: per shape and token count the bf16 and FP8 timings, the batch-1
GEMV candidates, each path's error against the dequantized reference, and the run's metadata."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "fp8_gemm.py"


@pytest.mark.triton
def test_tiny_run_reports_every_case_against_the_dequantized_reference(tmp_path: Path) -> None:
    out = tmp_path / "fp8_gemm.json"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--tokens", "1", "3", "--reps", "1"]
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert {"device", "commit", "command", "date"} <= result.keys() and result["interpreted"]
    assert [(r["shape"], r["tokens"]) for r in result["results"]] == [
        ("tiny_a", 1),
        ("tiny_a", 3),
        ("tiny_b", 1),
        ("tiny_b", 3),
    ]
    for r in result["results"]:
        assert r["linear_ms"] > 0 and r["w8a16_ms"] > 0 and r["w8a16_rel_err"] < 1e-5
        assert r["fp8_bytes"] < r["linear_bytes"] / 3  # one byte per weight against float32's four
        if r["tokens"] == 1:
            assert len(r["gemv_candidates_ms"]) == 6 and r["gemv_ms"] == min(r["gemv_candidates_ms"].values())
            assert r["gemv_rel_err"] < 1e-5 and r["gemv_gbs"] > 0
        else:
            assert r["w8a16_tflops"] > 0
