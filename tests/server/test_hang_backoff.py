"""The hang watchdog's timing rule on its own: after a hang kill the next engine gets twice the silence
(its first step recomputes every resumed request, which a starved CPU may stretch past the timeout),
and the timeout returns to its base once an engine is heard from. The engine client here is a small
stand-in exposing what the watchdog reads; tests/server/test_self_healing.py runs the real processes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from seekd.config import AdmissionConfig
from seekd.server.supervisor import EngineSupervisor


@dataclass
class SilentEngine:
    """What the watchdog reads of an EngineClient; `kill_hung` swaps in a fresh, silent engine."""

    pid: int = 100
    last_heard: float = field(default_factory=time.monotonic)
    has_work: bool = True
    dead_reason: str | None = None
    is_restarting: bool = False
    kills: list[tuple[int, float]] = field(default_factory=list)

    def kill_hung(self, reason: str) -> None:
        assert "hung" in reason
        self.kills.append((self.pid, time.monotonic()))
        self.pid += 1
        self.last_heard = time.monotonic()  # as EngineClient._spawn sets it once the new engine is ready

    def speak(self) -> None:
        self.last_heard = time.monotonic()


async def watch(engine: SilentEngine, seconds: float, base: float, during=None) -> EngineSupervisor:
    config = AdmissionConfig(engine_heartbeat_interval_s=min(0.05, base / 2.5), engine_hang_timeout_s=base)
    supervisor = EngineSupervisor(engine, config)  # type: ignore[arg-type]
    task = asyncio.create_task(supervisor._watch_heartbeats())
    try:
        if during is not None:
            await during(supervisor)
        await asyncio.sleep(seconds)
    finally:
        task.cancel()
    return supervisor


def test_each_hang_kill_doubles_the_silence_the_next_engine_gets():
    engine = SilentEngine()
    start = time.monotonic()
    supervisor = asyncio.run(watch(engine, 2.0, base=0.2))
    gaps = [t - prev for prev, t in zip([start] + [t for _, t in engine.kills], [t for _, t in engine.kills])]
    # killed after about 0.2, 0.4, 0.8 s of silence (each engine once, never twice)
    assert [pid for pid, _ in engine.kills] == list(range(100, 100 + len(engine.kills)))
    assert len(engine.kills) == 3, gaps
    for gap, expected in zip(gaps, (0.2, 0.4, 0.8)):
        assert expected <= gap < expected + 0.25, gaps
    assert supervisor.hang_timeout_s == 1.6


def test_the_timeout_returns_to_its_base_once_an_engine_speaks():
    engine = SilentEngine()

    async def recover(supervisor: EngineSupervisor) -> None:
        while not engine.kills:
            await asyncio.sleep(0.01)
        assert supervisor.hang_timeout_s == 0.4
        await asyncio.sleep(0.2)
        engine.speak()  # the new engine finished its first step
        await asyncio.sleep(0.15)
        assert supervisor.hang_timeout_s == 0.2
        engine.has_work = False  # idle: silence is fine

    supervisor = asyncio.run(watch(engine, 1.0, base=0.2, during=recover))
    assert len(engine.kills) == 1 and supervisor.hang_timeout_s == 0.2


def test_the_doubling_stops_at_sixteen_times_the_base():
    engine = SilentEngine()
    supervisor = asyncio.run(watch(engine, 3.5, base=0.05))
    assert supervisor.hang_timeout_s == 0.8 and len(engine.kills) >= 5
