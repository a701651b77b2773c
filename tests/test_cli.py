"""The console script, run as a user would: a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, data_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seekd.cli", *args, "--data-dir", str(data_dir), "--num-kv-blocks", "64"],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_on_the_demo_model_prints_text(data_dir):
    proc = run_cli("generate", "Hello", "--max-tokens", "8", "--temperature", "0", data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_generate_with_a_missing_model_folder_fails_with_a_clear_message(data_dir, tmp_path):
    proc = run_cli("generate", "Hi", "--model", str(tmp_path / "absent"), data_dir=data_dir)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


def test_chat_streams_replies_and_exits_on_eof(data_dir):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "seekd.cli",
            "chat",
            "--data-dir",
            str(data_dir),
            "--num-kv-blocks",
            "64",
            "--max-tokens",
            "6",
        ],
        input="Hi there\n/reset\nAgain\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("assistant>") == 2
    assert "RANDOM weights" in proc.stdout
    # the chat screen shows warnings only (the demo's capped context is one); no INFO start-up lines
    assert not [line for line in proc.stderr.splitlines() if " INFO " in line], proc.stderr


def test_chat_thinking_shows_the_reasoning_dimmed_on_the_v4_demo(data_dir):
    """--thinking: the V4 prompt opens <think>, so the (random) reply is reasoning, printed dim."""
    runs = {}
    for flags in ((), ("--thinking", "--reasoning-effort", "max")):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "seekd.cli",
                "chat",
                "--data-dir",
                str(data_dir),
                "--num-kv-blocks",
                "64",
                "--max-tokens",
                "6",
                "--temperature",
                "0",
                *flags,
            ],
            input="Hi there\nAnd now?\n",
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "FORCE_COLOR": "1", "COLUMNS": "200"},
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("assistant>") == 2
        runs[bool(flags)] = proc.stdout
    dim = "\x1b[2m"
    assert dim in runs[True] and dim not in runs[False]
