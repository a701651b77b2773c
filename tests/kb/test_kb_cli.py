"""`seekd kb` from the shell, as a real subprocess on a data directory: create, add a folder
(Chinese and English), re-add with one file changed and one deleted (--prune), search, list, rm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .corpus import EXPENSES_V1, EXPENSES_V2, LEAVE, PASSWORDS


def seekd_kb(data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "seekd.cli", "kb", *args, "--data-dir", str(data_dir), "--tenant", "team-a"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_kb_commands(tmp_path: Path) -> None:
    data, docs = tmp_path / "data", tmp_path / "docs"
    (docs / "hr").mkdir(parents=True)
    (docs / "hr" / "leave.md").write_text(LEAVE)
    (docs / "expenses.md").write_text(EXPENSES_V1)
    (docs / "passwords.txt").write_text(PASSWORDS)
    (docs / "ignored.bin").write_bytes(b"\0\1")
    assert seekd_kb(data, "create", "handbook").returncode == 0
    assert seekd_kb(data, "create", "handbook").returncode == 1  # exists

    first = seekd_kb(data, "add", "handbook", str(docs))
    assert first.returncode == 0, first.stderr
    assert sorted(line.split()[:2][1] for line in first.stdout.splitlines()) == [
        "expenses.md",
        "hr/leave.md",
        "passwords.txt",
    ]
    (docs / "expenses.md").write_text(EXPENSES_V2)
    (docs / "passwords.txt").unlink()
    second = seekd_kb(data, "add", "handbook", str(docs), "--prune").stdout.splitlines()
    assert {tuple(line.split()[:2]) for line in second} == {
        ("updated", "expenses.md"),
        ("unchanged", "hr/leave.md"),
        ("removed", "passwords.txt"),
    }

    found = seekd_kb(data, "search", "handbook", "年假有多少天", "-k", "1")
    assert found.returncode == 0 and "hr/leave.md" in found.stdout and "十五天" in found.stdout
    assert "Huiyuan" in seekd_kb(data, "search", "handbook", "expense portal for receipts", "-k", "1").stdout
    assert seekd_kb(data, "list").stdout.split() == ["handbook"]
    assert "hr/leave.md" in seekd_kb(data, "list", "handbook").stdout
    assert seekd_kb(data, "rm", "handbook", "hr/leave.md").returncode == 0
    assert seekd_kb(data, "rm", "handbook", "hr/leave.md").returncode == 1
    assert seekd_kb(data, "rm", "handbook").returncode == 0
    assert seekd_kb(data, "list").stdout.split() == []
