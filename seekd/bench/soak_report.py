"""A soak's result: the JSON record (header, settings, verdict, time series) and its console tables."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from seekd.bench.metrics import distribution
from seekd.bench.report import host_info
from seekd.bench.soak import SoakOutcome, SoakSettings
from seekd.bench.soak_probe import ServerSample
from seekd.bench.soak_workload import OUTCOMES, SoakRecord

GAUGES = ("kv_usage", "running", "waiting", "queued")
MEMORY = ("api_rss_mib", "api_fds", "api_threads", "engine_rss_mib", "engine_fds", "engine_threads")


def windows(
    records: Sequence[SoakRecord], samples: Sequence[ServerSample], window_s: float, elapsed_s: float
) -> list[dict[str, Any]]:
    """Per window of `window_s` (requests by when they ended): outcomes, TTFT and e2e percentiles of
    completed requests, output tok/s, the peak of the server's gauges and its last memory figures."""
    out = []
    for i in range(max(1, math.ceil(elapsed_s / window_s))):
        lo, hi = i * window_s, (i + 1) * window_s
        done = [r for r in records if lo <= r.end < hi]
        ok = [r for r in done if r.outcome == "ok"]
        seen = [x for x in samples if lo <= x.t < hi and x.error is None]
        row: dict[str, Any] = {
            "t_start": lo,
            "t_end": min(hi, elapsed_s),
            "requests": len(done),
            **{outcome: sum(r.outcome == outcome for r in done) for outcome in OUTCOMES},
            "output_tok_s": sum(r.output_tokens for r in ok) / (min(hi, elapsed_s) - lo or 1.0),
            "ttft_ms": distribution([r.ttft for r in ok if r.ttft is not None]),
            "e2e_ms": distribution([r.e2e for r in ok]),
        }
        for key in GAUGES:
            row[f"{key}_max"] = max((v for x in seen if (v := getattr(x, key)) is not None), default=None)
        for key in MEMORY:
            values = [v for x in seen if (v := getattr(x, key)) is not None]
            row[key] = values[-1] if values else None
        out.append(row)
    return out


def totals(records: Sequence[SoakRecord]) -> dict[str, Any]:
    ok = [r for r in records if r.outcome == "ok"]
    by_kind: dict[str, Counter] = {}
    for r in records:
        by_kind.setdefault(r.kind, Counter())[r.outcome] += 1
    return {
        "requests": len(records),
        **{outcome: sum(r.outcome == outcome for r in records) for outcome in OUTCOMES},
        "by_kind": {kind: dict(counts) for kind, counts in sorted(by_kind.items())},
        "output_tokens": sum(r.output_tokens for r in ok),
        "ttft_ms": distribution([r.ttft for r in ok if r.ttft is not None]),
        "e2e_ms": distribution([r.e2e for r in ok]),
    }


def build_result(
    header: dict[str, str], settings: SoakSettings, server: dict[str, Any], outcome: SoakOutcome
) -> dict[str, Any]:
    """The JSON record. Requests that were not ok are kept one by one (what went wrong, when);
    the rest only in totals and windows."""
    not_ok = [
        dataclasses.asdict(r) | {"e2e": r.e2e} for r in outcome.records if r.outcome not in ("ok", "disconnected")
    ]
    return {
        **header,
        "host": host_info(),
        "passed": outcome.passed,
        "settings": dataclasses.asdict(settings),
        "server": server,
        "elapsed_s": round(outcome.elapsed_s, 2),
        "checks": [dataclasses.asdict(c) for c in outcome.checks],
        "totals": totals(outcome.records),
        "kills": outcome.kills,
        "final_health": outcome.final_health,
        "server_log": outcome.server_log,
        "windows": windows(outcome.records, outcome.samples, settings.window_s, outcome.elapsed_s),
        "idle_samples": [
            {"cycle": s.cycle, "settled": s.settled, "settle_s": s.settle_s, **dataclasses.asdict(s.sample)}
            for s in outcome.idle
        ],
        "samples": [dataclasses.asdict(s) for s in outcome.samples],
        "requests_not_ok": not_ok,
    }


def _ms(d: dict[str, float | None], key: str) -> str:
    return "-" if d.get(key) is None else f"{d[key]:,.0f}"


def summary_tables(result: dict[str, Any]) -> list[Table]:
    """Totals (requests, latency, memory first and last) and the checks with their verdicts."""
    t = result["totals"]
    head = Table(title=f"seekd bench soak: {result['server'].get('model')} for {result['elapsed_s'] / 60:.1f} min")
    head.add_column("what")
    head.add_column("value", justify="right")
    head.add_row("requests", f"{t['requests']:,}")
    head.add_row("ok / disconnected / rejected / error / lost", " / ".join(str(t[o]) for o in OUTCOMES))
    head.add_row("TTFT p50 / p99 ms", f"{_ms(t['ttft_ms'], 'p50')} / {_ms(t['ttft_ms'], 'p99')}")
    head.add_row("e2e p50 / p99 ms", f"{_ms(t['e2e_ms'], 'p50')} / {_ms(t['e2e_ms'], 'p99')}")
    killed = [k for k in result["kills"] if k.get("pid") is not None]
    head.add_row("engine kills", str(len(killed)))
    idle = [s for s in result["idle_samples"] if s["settled"]]
    for key, label in (("api_rss_mib", "API server RSS MiB"), ("api_fds", "API server FDs")):
        values = [s[key] for s in idle if s[key] is not None]
        if values:
            head.add_row(f"{label} (idle, first -> last)", f"{values[0]:,.0f} -> {values[-1]:,.0f}")
    checks = Table(title="checks")
    checks.add_column("check")
    checks.add_column("verdict")
    checks.add_column("detail", overflow="fold")
    for c in result["checks"]:
        verdict = (
            "[yellow]skipped[/yellow]" if c["skipped"] else "[green]pass[/green]" if c["passed"] else "[red]FAIL[/red]"
        )
        checks.add_row(c["name"], verdict, c["detail"])
    return [head, checks]
