"""The soak's verdict: growth, idle state and lost requests fail on series that show them, and pass
on healthy ones. Answers are judged from real responses of the fake server (a cut stream, an
error, a hang), through the same client and judge the soak uses."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import httpx
import pytest

from seekd.bench.cli import duration
from seekd.bench.client import ClientConfig, send_request
from seekd.bench.soak_checks import (
    IdleSample,
    Tolerances,
    error_rate,
    evaluate,
    growth_checks,
    idle_state,
    kill_checks,
    lost_requests,
    server_log,
)
from seekd.bench.soak_probe import ServerSample, summarize_log
from seekd.bench.soak_workload import PlannedRequest, SoakRecord, parse_mix, record
from seekd.bench.workloads import BenchRequest

from .conftest import FakeOpenAIServer

TOL = Tolerances()


def idle_series(api_rss, engine_rss=None, engine_pids=None, kv=None, fds=None, step_s=60.0) -> list[IdleSample]:
    out = []
    for i, rss in enumerate(api_rss):
        sample = ServerSample(
            t=(i + 1) * step_s,
            phase="idle",
            client_in_flight=0,
            engine_pid=(engine_pids or [100] * len(api_rss))[i],
            engine_state="running",
            server_in_flight=0,
            queued=0,
            running=0.0,
            waiting=0.0,
            kv_usage=(kv or [0.0] * len(api_rss))[i],
            api_rss_mib=rss,
            api_fds=(fds or [30] * len(api_rss))[i],
            api_threads=7,
            engine_rss_mib=(engine_rss or [1400.0] * len(api_rss))[i],
            engine_fds=17,
            engine_threads=4,
        )
        out.append(IdleSample(i, True, 0.1, sample))
    return out


def by_name(checks) -> dict:
    return {c.name.split(" (pid")[0] if c.name.startswith("engine") else c.name: c for c in checks}


def test_steady_footprint_passes_and_steady_growth_fails() -> None:
    flat = idle_series([200.0 + (i % 3) for i in range(60)])  # noise, no trend
    assert all(c.passed and not c.skipped for c in growth_checks(flat, [], 300.0, TOL))

    leaking = idle_series([200.0 + 1.5 * i for i in range(60)])  # +1.5 MiB a minute: +90 MiB/h
    checks = by_name(growth_checks(leaking, [], 300.0, TOL))
    assert not checks["API server RSS"].passed
    assert "+" in checks["API server RSS"].detail and "MiB/h" in checks["API server RSS"].detail
    assert checks["API server open FDs"].passed

    fd_leak = idle_series([200.0] * 60, fds=[30 + i // 4 for i in range(60)])  # one socket every 4 cycles
    assert not by_name(growth_checks(fd_leak, [], 300.0, TOL))["API server open FDs"].passed


def test_warm_up_growth_is_forgiven() -> None:
    warming = idle_series([100.0 + min(i, 5) * 30 for i in range(60)])  # +150 MiB in the first 5 minutes only
    assert by_name(growth_checks(warming, [], 360.0, TOL))["API server RSS"].passed
    assert not by_name(growth_checks(warming, [], 0.0, TOL))["API server RSS"].passed


def test_engine_growth_is_judged_per_process() -> None:
    pids = [100] * 30 + [200] * 30
    # each engine restarts small and levels off: not growth, though the series saws up and down
    sawtooth = [1400.0 + min(i % 30, 3) * 20 for i in range(60)]
    checks = growth_checks(idle_series([200.0] * 60, sawtooth, pids), [], 300.0, TOL)
    engine = [c for c in checks if c.name.startswith("engine")]
    assert len(engine) == 6 and all(c.passed for c in engine)  # RSS, FDs, threads of two processes

    leaking_second = [1400.0] * 30 + [1400.0 + 15 * i for i in range(30)]
    checks = growth_checks(idle_series([200.0] * 60, leaking_second, pids), [], 300.0, TOL)
    failed = [c.name for c in checks if not c.passed]
    assert failed == ["engine #2 (pid 200, from 1860 s) RSS"]


def test_too_few_samples_skip_rather_than_guess() -> None:
    checks = growth_checks(idle_series([200.0, 900.0]), [], 600.0, TOL)
    assert all(c.passed and c.skipped for c in checks)


def test_kv_blocks_in_use_when_idle_fail() -> None:
    assert idle_state(idle_series([200.0] * 5), TOL.kv_idle).passed
    leaked = idle_series([200.0] * 5, kv=[0.0, 0.0, 0.004, 0.004, 0.004])
    check = idle_state(leaked, TOL.kv_idle)
    assert not check.passed and "3 of 5" in check.detail and "KV usage 0.40%" in check.detail
    stuck = idle_series([200.0] * 3)
    stuck[1] = IdleSample(1, False, 60.0, stuck[1].sample)
    assert "never settled" in idle_state(stuck, TOL.kv_idle).detail


async def judge_all(server: FakeOpenAIServer, prompts: list[tuple[str, int]]) -> list[SoakRecord]:
    config = ClientConfig(server.base_url, "fake-model", "chat", timeout_s=1.0)
    async with httpx.AsyncClient() as client:
        records = []
        for text, n in prompts:
            plan = PlannedRequest("chat_stream", "chat", BenchRequest(text, 3), {"stream": True}, n)
            result = await send_request(client, config, plan.request, overrides=plan.overrides)
            records.append(record(plan, result, result.e2e, burst=False))
        return records


def test_cut_streams_hangs_and_bare_errors_are_lost_requests() -> None:
    with FakeOpenAIServer(ttft_s=0.01, itl_s=0.005).running() as server:
        records = asyncio.run(
            judge_all(
                server,
                [
                    ("fine", 1),
                    ("CUT after one word", 1),  # the connection drops mid-body
                    ("QUIT after one word", 1),  # the body ends cleanly, but without [DONE]
                    ("HANG", 1),  # no answer within the timeout
                    ("fine, but two choices asked", 2),  # only choice 0 finishes
                    ("STATUS=503", 1),  # a proper OpenAI error object: an error, not lost
                    ("STATUS=429", 1),
                ],
            )
        )
    outcomes = [r.outcome for r in records]
    assert outcomes == ["ok", "lost", "lost", "lost", "lost", "error", "rejected"]
    assert "RemoteProtocolError" in records[1].reason
    assert "without [DONE]" in records[2].reason
    assert "hung" in records[3].reason or "no response" in records[3].reason
    assert "choices [1] of 2" in records[4].reason

    check = lost_requests(records)
    assert not check.passed and check.detail.startswith("4 of 7")
    assert not error_rate(records, 0.01).passed  # 2 of 7
    assert error_rate(records, 0.5).passed
    verdict = evaluate(records, [], [], [], 0, 0.0, TOL)
    assert {c.name for c in verdict if not c.passed} == {"lost requests", "error rate"}


def test_healthy_answers_pass_every_request_check() -> None:
    with FakeOpenAIServer(ttft_s=0.01, itl_s=0.005).running() as server:
        records = asyncio.run(judge_all(server, [("one", 1), ("two", 1), ("three", 1)]))
    assert [r.outcome for r in records] == ["ok"] * 3
    assert all(c.passed for c in evaluate(records, [], idle_series([200.0] * 3), [], 0, 0.0, TOL))


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("20m", 1200), ("2h", 7200), ("1h30m", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "5x", "-3m"])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="like 90, 90s, 20m"):
        duration(text)


def test_bad_mix_names_the_kinds() -> None:
    assert parse_mix("chat_stream=1")["disconnect"] == 0.0
    with pytest.raises(ValueError, match="kinds from chat_stream"):
        parse_mix("chat=1")
    with pytest.raises(ValueError, match="weight 0"):
        parse_mix("chat_stream=0")


def test_a_kill_without_a_restart_fails() -> None:
    kills = [
        {"t": 100.0, "pid": 11, "client_in_flight": 5, "restart_s": 4.2, "new_pid": 12},
        {"t": 700.0, "pid": 12, "client_in_flight": 3, "restart_s": None, "new_pid": None},
    ]
    (check,) = kill_checks(kills, planned=2)
    assert not check.passed and "no restart after the kill at 700 s" in check.detail
    (check,) = kill_checks([kills[0], {"t": 3590.0, "pid": None, "skipped": "the run ended first"}], planned=2)
    assert check.passed and check.detail.startswith("1 of 2 planned kills, restarts took 4.2-4.2 s")


def test_tracebacks_in_the_server_log_fail_and_kill_errors_do_not(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        "2026-12-07 19:54:33,439 ERROR seekd.server.engine_client: engine core process pid=7: "
        "the engine core process died (exit code -9)\n"
        "2026-12-07 19:54:33,439 WARNING seekd.server.supervisor: restarting the engine core (restart 1)\n"
    )
    summary = summarize_log(log)
    assert summary["errors"] == 1 and summary["unexpected_errors"] == 0 and summary["warnings"] == 1
    assert server_log(summary).passed
    with log.open("a") as f:
        f.write(
            "ERROR:    Exception in ASGI application\nTraceback (most recent call last):\n"
            '  File "x.py", line 1, in f\n    raise RuntimeError("boom")\nRuntimeError: boom\n'
        )
    check = server_log(summarize_log(log))
    assert not check.passed and "Traceback: RuntimeError: boom" in check.detail
    assert "1 tracebacks, 1 unexpected ERROR lines" in check.detail
