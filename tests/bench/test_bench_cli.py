"""`seekd bench serve | compare | offline` as a user runs them: JSON, plot and tables."""

from __future__ import annotations

import datetime
import json
import shlex
import sys
from pathlib import Path

import pytest

from seekd.bench.report import result_header, seekd_commit
from seekd.cli import main

from .conftest import FakeOpenAIServer


def bench_serve(server: FakeOpenAIServer, out: Path, *extra: str) -> int:
    return main(
        [
            "bench",
            "serve",
            "--base-url",
            server.base_url,
            "--num-prompts",
            "6",
            "--input-len",
            "8",
            "--output-len",
            "3",
            "--max-concurrency",
            "3",
            "--out",
            str(out),
            *extra,
        ]
    )


def test_serve_sweep_writes_a_result_with_its_provenance_and_a_plot(tmp_path: Path, capsys) -> None:
    with FakeOpenAIServer(ttft_s=0.02, itl_s=0.01).running() as server:
        rc = bench_serve(
            server,
            tmp_path / "a.json",
            "--request-rate",
            "40,inf",
            "--slo-ttft-ms",
            "500",
            "--slo-tpot-ms",
            "50",
            "--ignore-eos",
            "--extra-body",
            '{"top_k": 5}',
            "--api-key",
            "sk-secret",
        )
        assert rc == 0
        assert all(b["ignore_eos"] is True and b["top_k"] == 5 for b in server.bodies)
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["model"] == "fake-model"  # taken from /v1/models
    assert result["base_url"] == server.base_url
    assert result["command"].startswith("seekd bench serve --base-url")
    assert "sk-secret" not in (tmp_path / "a.json").read_text() and "--api-key '***'" in result["command"]
    assert {"date", "seekd_commit", "host"} <= result.keys() and result["host"]["cpu_count"]
    assert [run["label"] for run in result["runs"]] == ["40 (max concurrency 3)", "inf (max concurrency 3)"]
    assert result["request_rates"] == [40.0, None]
    for run in result["runs"]:
        assert run["completed"] == 6 and run["goodput"] == run["request_throughput"]
        assert run["load_average_1m"] >= 0
    out = capsys.readouterr().out
    assert "requests/s" in out and "TTFT p50 ms" in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in out
    else:
        assert (tmp_path / "a.png").stat().st_size > 10_000


def test_compare_prints_results_side_by_side(tmp_path: Path, capsys) -> None:
    for name, delay in (("fast.json", 0.01), ("slow.json", 0.05)):
        with FakeOpenAIServer(ttft_s=delay, itl_s=delay).running() as server:
            assert bench_serve(server, tmp_path / name, "--no-plot") == 0
    capsys.readouterr()

    assert main(["bench", "compare", str(tmp_path / "fast.json"), str(tmp_path / "slow.json")]) == 0
    out = capsys.readouterr().out
    assert "fast.json" in out and "slow.json" in out and "change" in out
    assert "TTFT p50 ms" in out and "%" in out


def test_a_wrong_model_fails_fast_with_the_servers_message(tmp_path: Path, capsys) -> None:
    with FakeOpenAIServer().running() as server:
        rc = bench_serve(
            server,
            tmp_path / "x.json",
            "--model",
            "m",
            "--dataset",
            "fixed",
            "--extra-body",
            '{"prompt": "STATUS=404"}',
        )
    assert rc == 1
    assert "404" in capsys.readouterr().out and not (tmp_path / "x.json").exists()


def test_jsonl_of_chat_messages_needs_the_chat_endpoint(tmp_path: Path, capsys) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with FakeOpenAIServer(ttft_s=0.01, itl_s=0.01).running() as server:
        args = ("--model", "m", "--dataset", "jsonl", "--dataset-path", str(path), "--no-plot")
        assert bench_serve(server, tmp_path / "c.json", *args) == 2
        assert "--endpoint chat" in capsys.readouterr().err
        assert bench_serve(server, tmp_path / "c.json", *args, "--endpoint", "chat") == 0
    assert json.loads((tmp_path / "c.json").read_text())["runs"][0]["completed"] == 1


@pytest.mark.slow
def test_offline_runs_a_tiny_shape_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "offline.json"
    rc = main(
        [
            "bench",
            "offline",
            "--device",
            "cpu",
            "--num-requests",
            "3",
            "--input-len",
            "4",
            "8",
            "--output-len",
            "4",
            "8",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["output_tok_s"] > 0 and 12 <= result["output_tokens"] <= 24
    assert list(result)[:5] == ["benchmark", "device", "commit", "date", "command"]
    assert result["command"].startswith("seekd bench offline --device cpu") and result["host"]["cpu_count"]


def test_result_header_names_the_benchmark_device_commit_date_and_command() -> None:
    header = result_header("toy", "cpu (test)")
    assert list(header) == ["benchmark", "device", "commit", "date", "command"]
    assert header["benchmark"] == "toy" and header["device"] == "cpu (test)"
    assert header["commit"].removesuffix("-dirty") == seekd_commit().removesuffix("-dirty")
    date = datetime.datetime.fromisoformat(header["date"])
    assert date.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - date) < datetime.timedelta(minutes=1)
    assert header["command"] == "python " + shlex.join(sys.argv)

    given = result_header("toy", "cpu", commit="abc123", command="seekd bench offline")
    assert given["commit"] == "abc123" and given["command"] == "seekd bench offline"


def test_commit_of_an_exported_or_nested_tree_is_its_own(tmp_path):
    """A `git archive` export names its commit in COMMIT; a copy inside another checkout must not
    claim that checkout's commit (GPU runs copy the tree into one)."""
    import subprocess

    outer = tmp_path / "outer"
    tree = outer / "snapshot"
    tree.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(outer),
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "outer",
        ],
        check=True,
    )
    assert seekd_commit(tree).endswith("(no git checkout)")
    assert len(seekd_commit(outer).removesuffix("-dirty")) == 40
    (tree / "COMMIT").write_text("0123abcd\n")
    assert seekd_commit(tree) == "0123abcd"
