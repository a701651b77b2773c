"""The V4-Flash slice benchmark runs end to end (tiny dimensions, CPU) and writes what it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "v4_flash_slice.py"


def test_tiny_slice_reports_per_layer_decode_and_kv_bytes(tmp_path: Path) -> None:
    out = tmp_path / "slice.json"
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--tiny",
        "--device",
        "cpu",
        "--context",
        "40",
        "--steps",
        "3",
        "--batches",
        "1",
        "3",
        "--num-layers",
        "3",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert [layer["attention"] for layer in result["layers"]] == [
        "heavily_compressed_attention",
        "compressed_sparse_attention",
        "heavily_compressed_attention",
    ]
    assert [layer["mlp"] for layer in result["layers"]] == ["hash_moe", "moe", "moe"]
    assert [run["batch"] for run in result["decode"]] == [1, 3]
    assert all(len(run["per_layer_ms"]) == 3 and min(run["per_layer_ms"]) > 0 for run in result["decode"])
    full = result["v4_flash_kv_bytes_per_token"]["by_kind"]  # float32 on the CPU: twice the bf16 bytes
    assert full["compressed_4"]["per_token"] == 20 * (512 + 128) * 4 / 4
    assert full["compressed_128"]["per_token"] == 23 * 512 * 4 / 128
    assert {"device", "commit", "command", "date"} <= result.keys()
