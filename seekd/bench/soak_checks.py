"""The verdict of a soak: lost requests, error rate, idle state, growth over time, engine restarts.

Growth is judged on idle samples only (taken between bursts, once nothing is in flight), where a
healthy server returns to the same footprint every time: the median of the last idle samples is
compared with the median of the first ones after warm-up. The engine core is judged per process
(each restart is a fresh process); the API server over the whole run, across restarts, which is
where sockets or buffers left behind by a dead engine would pile up.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from seekd.bench.soak_probe import ServerSample
from seekd.bench.soak_workload import SoakRecord


@dataclass(frozen=True)
class Tolerances:
    rss_rel: float = 0.10  # RSS may grow by this fraction of its baseline ...
    rss_abs_mib: float = 32.0  # ... plus this many MiB
    fds: int = 8  # open file descriptors
    threads: int = 4
    kv_idle: float = 0.0  # KV cache usage (0-1) allowed with nothing in flight
    max_error_rate: float = 0.01  # errors + rejections per request (lost requests always fail)
    max_probe_failures: float = 0.10  # share of /ready + /metrics probes that may fail


@dataclass(frozen=True)
class IdleSample:
    """The server between two bursts: `settled` is False when it never became quiet within the
    idle timeout (requests stuck in the engine or the queue)."""

    cycle: int
    settled: bool
    settle_s: float
    sample: ServerSample


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    skipped: bool = False  # too little data to judge (a short run): passes, and says so


def lost_requests(records: Sequence[SoakRecord]) -> Check:
    lost = [r for r in records if r.outcome == "lost"]
    if not lost:
        return Check("lost requests", True, f"0 of {len(records)}")
    examples = "; ".join(f"{r.kind} at {r.start:.1f} s: {r.reason}" for r in lost[:3])
    return Check("lost requests", False, f"{len(lost)} of {len(records)} admitted requests were lost: {examples}")


def error_rate(records: Sequence[SoakRecord], bound: float) -> Check:
    judged = [r for r in records if r.outcome != "disconnected"]
    bad = [r for r in judged if r.outcome in ("error", "rejected")]
    rate = len(bad) / len(judged) if judged else 0.0
    detail = f"{len(bad)} of {len(judged)} ({rate:.2%}, bound {bound:.2%})"
    if bad:
        reasons = Counter(r.reason.split(":")[0] for r in bad).most_common(3)
        detail += ": " + ", ".join(f"{reason} x{count}" for reason, count in reasons)
    return Check("error rate", rate <= bound, detail)


def completed_work(records: Sequence[SoakRecord]) -> Check:
    ok = sum(r.outcome == "ok" for r in records)
    return Check("requests completed", ok > 0, f"{ok} completed of {len(records)} sent")


def idle_state(idle: Sequence[IdleSample], kv_tolerance: float) -> Check:
    """Between bursts nothing may stay running or queued, and the KV cache must be empty again
    (cached prefix blocks count as free): anything left is a request or a block that leaked."""
    if not idle:
        return Check("idle state", True, "no idle sample taken", skipped=True)
    bad = []
    for s in idle:
        x = s.sample
        if not s.settled:
            bad.append(
                f"cycle {s.cycle} at {x.t:.0f} s never settled in {s.settle_s:.0f} s (running {x.running}, "
                f"waiting {x.waiting}, in flight {x.server_in_flight}, queued {x.queued}, {x.error or x.engine_state})"
            )
        elif x.kv_usage is not None and x.kv_usage > kv_tolerance:
            bad.append(f"cycle {s.cycle} at {x.t:.0f} s: KV usage {x.kv_usage:.2%} with nothing in flight")
    if bad:
        return Check("idle state", False, f"{len(bad)} of {len(idle)} idle samples: " + "; ".join(bad[:3]))
    worst = max((s.sample.kv_usage or 0.0) for s in idle)
    settle = max(s.settle_s for s in idle)
    return Check(
        "idle state", True, f"{len(idle)} idle samples quiet, KV max {worst:.2%}, settled within {settle:.1f} s"
    )


MIN_GROWTH_POINTS = 4


def _slope_per_hour(points: Sequence[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    ts, vs = zip(*points)
    mean_t, mean_v = statistics.fmean(ts), statistics.fmean(vs)
    var = sum((t - mean_t) ** 2 for t in ts)
    return 0.0 if var == 0 else sum((t - mean_t) * (v - mean_v) for t, v in points) / var * 3600.0


def growth(name: str, points: Sequence[tuple[float, float]], allowed: Callable[[float], float], unit: str) -> Check:
    """Median of the last k points against the median of the first k (k = a quarter, 1 to 5);
    fails when the rise exceeds allowed(baseline). Points are (seconds, value), after warm-up; fewer
    than MIN_GROWTH_POINTS say too little (an engine killed minutes after its warm-up)."""
    if len(points) < MIN_GROWTH_POINTS:
        return Check(name, True, f"{len(points)} idle samples after warm-up: too few to judge", skipped=True)
    k = min(5, max(1, len(points) // 4))
    baseline = statistics.median(v for _, v in points[:k])
    final = statistics.median(v for _, v in points[-k:])
    rise, limit = final - baseline, allowed(baseline)
    span_s = points[-1][0] - points[0][0]
    detail = f"{baseline:,.1f} -> {final:,.1f} {unit} ({rise:+,.1f}, allowed +{limit:,.1f}) over {span_s / 60:.1f} min"
    if span_s >= 600:  # a slope over a few minutes says more about noise than about a trend
        detail += f", slope {_slope_per_hour(points):+,.1f} {unit}/h"
    return Check(name, rise <= limit, detail)


METRICS = (  # (sample field, label, unit)
    ("rss_mib", "RSS", "MiB"),
    ("fds", "open FDs", "FDs"),
    ("threads", "threads", "threads"),
)


def _allowance(field: str, tol: Tolerances) -> Callable[[float], float]:
    if field == "rss_mib":
        return lambda baseline: tol.rss_abs_mib + tol.rss_rel * baseline
    return lambda _: float(tol.fds if field == "fds" else tol.threads)


def _points(idle: Sequence[IdleSample], attr: str, since: float) -> list[tuple[float, float]]:
    out = []
    for s in idle:
        value = getattr(s.sample, attr)
        if s.settled and value is not None and s.sample.t >= since:
            out.append((s.sample.t, float(value)))
    return out


def growth_checks(
    idle: Sequence[IdleSample], samples: Sequence[ServerSample], warmup_s: float, tol: Tolerances
) -> list[Check]:
    """API server over the whole run; each engine-core process from warm-up after its own start
    (its first appearance in `samples`, the time series)."""
    checks = []
    for field, label, unit in METRICS:
        if any(getattr(s.sample, f"api_{field}") is not None for s in idle):
            checks.append(
                growth(f"API server {label}", _points(idle, f"api_{field}", warmup_s), _allowance(field, tol), unit)
            )
    started: dict[int, float] = {}
    for x in [*samples, *(s.sample for s in idle)]:
        if x.engine_pid is not None and x.engine_rss_mib is not None:
            started[x.engine_pid] = min(x.t, started.get(x.engine_pid, x.t))
    for number, (pid, start) in enumerate(sorted(started.items(), key=lambda item: item[1]), 1):
        since = warmup_s if number == 1 else start + warmup_s  # the first engine started with the soak
        mine = [s for s in idle if s.sample.engine_pid == pid]
        for field, label, unit in METRICS:
            name = f"engine #{number} (pid {pid}, from {start:.0f} s) {label}"
            checks.append(growth(name, _points(mine, f"engine_{field}", since), _allowance(field, tol), unit))
    return checks


def kill_checks(kills: Sequence[dict[str, Any]], planned: int) -> list[Check]:
    if planned == 0:
        return []
    done = [k for k in kills if k.get("pid") is not None]
    failed = [k for k in done if k.get("restart_s") is None]
    detail = f"{len(done)} of {planned} planned kills"
    if done:
        times = [k["restart_s"] for k in done if k.get("restart_s") is not None]
        detail += f", restarts took {min(times, default=0):.1f}-{max(times, default=0):.1f} s"
        detail += f", {sum(k.get('client_in_flight', 0) for k in done)} requests in flight across them"
    if failed:
        detail += "; no restart after the kill at " + ", ".join(f"{k['t']:.0f} s" for k in failed)
    return [Check("engine kills", not failed, detail)]


def probe_failures(samples: Sequence[ServerSample], bound: float) -> Check:
    failed = [s for s in samples if s.error is not None]
    share = len(failed) / len(samples) if samples else 0.0
    detail = f"{len(failed)} of {len(samples)} probes failed"
    if failed:
        detail += f" (first at {failed[0].t:.0f} s: {failed[0].error})"
    return Check("server answered probes", share <= bound, detail)


def server_log(summary: dict[str, Any] | None) -> Check:
    """A traceback in the server's log is an exception nothing handled: a bug even when every
    request came through. ERROR lines other than the engine kills' are listed, not judged."""
    if summary is None:
        return Check("server log", True, "no log (a server started elsewhere)", skipped=True)
    detail = f"{summary['tracebacks']} tracebacks, {summary['unexpected_errors']} unexpected ERROR lines"
    if summary["examples"]:
        detail += ": " + " | ".join(summary["examples"][:3])
    return Check("server log", summary["tracebacks"] == 0, detail)


def evaluate(
    records: Sequence[SoakRecord],
    samples: Sequence[ServerSample],
    idle: Sequence[IdleSample],
    kills: Sequence[dict[str, Any]],
    planned_kills: int,
    warmup_s: float,
    tol: Tolerances,
) -> list[Check]:
    return [
        completed_work(records),
        lost_requests(records),
        error_rate(records, tol.max_error_rate),
        idle_state(idle, tol.kv_idle),
        *kill_checks(kills, planned_kills),
        probe_failures(samples, tol.max_probe_failures),
        *growth_checks(idle, samples, warmup_s, tol),
    ]
