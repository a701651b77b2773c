"""Benchmark results: the JSON record, rich tables (one run, or files side by side) and a PNG plot.

A result is {metadata..., "runs": [summary per request rate]}; the metadata (host, seekd commit,
date, exact command, server, model) makes a number reproducible and comparable later.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

import seekd

# (label, summary key, sub-key or None, True when higher is better)
KEY_METRICS: tuple[tuple[str, str, str | None, bool], ...] = (
    ("requests/s", "request_throughput", None, True),
    ("output tok/s", "output_throughput", None, True),
    ("goodput req/s", "goodput", None, True),
    ("TTFT p50 ms", "ttft_ms", "p50", False),
    ("TTFT p99 ms", "ttft_ms", "p99", False),
    ("TPOT p50 ms", "tpot_ms", "p50", False),
    ("TPOT p99 ms", "tpot_ms", "p99", False),
    ("ITL p50 ms", "itl_ms", "p50", False),
    ("E2E p50 ms", "e2e_ms", "p50", False),
    ("E2E p99 ms", "e2e_ms", "p99", False),
    ("failed", "failed", None, False),
)


def _run(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def seekd_commit(root: Path | None = None) -> str:
    """The commit of the seekd source tree in use (an editable install), else the version. A tree
    exported with `git archive` names its commit in a COMMIT file; a tree that is not the top of its
    own checkout (a copy inside another repository) must not report that repository's commit."""
    root = (root or Path(seekd.__file__).parent.parent).resolve()
    marker = root / "COMMIT"
    if marker.is_file():
        return marker.read_text().strip()
    toplevel = _run(["git", "rev-parse", "--show-toplevel"], cwd=root)
    commit = _run(["git", "rev-parse", "HEAD"], cwd=root)
    if commit is None or toplevel is None or Path(toplevel).resolve() != root:
        return f"seekd {seekd.__version__} (no git checkout)"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)
    return commit + ("-dirty" if dirty else "")


def result_header(benchmark: str, device: str, commit: str | None = None, command: str | None = None) -> dict[str, str]:
    """The five keys every benchmark result opens with, so a number can be traced to what produced it.
    `commit` overrides the checked-out one (a run from a copied tree); `command` overrides
    `python <argv>` where a script records its invocation differently."""
    return {
        "benchmark": benchmark,
        "device": device,
        "commit": seekd_commit() if commit is None else commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + shlex.join(sys.argv) if command is None else command,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    """Where the benchmark client ran (the server's own machine when it is on loopback)."""
    gpus = None
    if shutil.which("nvidia-smi"):
        out = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"])
        gpus = out.splitlines() if out else None
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
    }


def load_average() -> float | None:
    """The client host's 1-minute load average: a run measured on a busy machine shows it."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def rate_label(request_rate: float, max_concurrency: int | None) -> str:
    rate = "inf" if math.isinf(request_rate) else f"{request_rate:g}"
    return rate + (f" (max concurrency {max_concurrency})" if max_concurrency else "")


def redact_api_key(argv: Sequence[str]) -> list[str]:
    """Results get shared; an API key given on the command line must not travel with them."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--api-key" and i + 1 < len(out):
            out[i + 1] = "***"
        elif arg.startswith("--api-key="):
            out[i] = "--api-key=***"
    return out


def new_result(argv: Sequence[str], settings: dict[str, Any]) -> dict[str, Any]:
    """The metadata of a result (`argv`: the seekd command's arguments); runs are appended as they finish."""
    return {
        "benchmark": "serve",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "seekd " + shlex.join(redact_api_key(argv)),
        "seekd_commit": seekd_commit(),
        "host": host_info(),
        **settings,
        "runs": [],
    }


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def load_json(path: Path) -> dict[str, Any]:
    result = json.loads(Path(path).read_text())
    if not isinstance(result, dict) or "runs" not in result:
        raise ValueError(f"{path} is not a `seekd bench serve` result (no runs)")
    return result


def _value(run: dict[str, Any], key: str, sub: str | None) -> float | None:
    value = run.get(key)
    if sub is not None:
        value = value.get(sub) if isinstance(value, dict) else None
    return value


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"


def summary_table(result: dict[str, Any]) -> Table:
    """Metrics as rows, one column per request rate (narrow enough for a terminal)."""
    table = Table(title=f"{result.get('model')} at {result.get('base_url')} ({result.get('endpoint')})")
    table.add_column("metric")
    for run in result["runs"]:
        table.add_column(f"rate {run['label']}", justify="right")
    for label, key, sub, _ in KEY_METRICS:
        table.add_row(label, *(_fmt(_value(run, key, sub)) for run in result["runs"]))
    return table


def compare_table(results: Sequence[dict[str, Any]], names: Sequence[str]) -> Table:
    """Metrics as rows, files as columns; the i-th run of each file side by side (a sweep over the
    same rates lines up rate by rate). With two files the last column is the second's change
    against the first, green where it is better."""
    table = Table(title="seekd bench compare")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    if len(results) == 2:
        table.add_column("change", justify="right")
    extra = [""] if len(results) == 2 else []
    for key in ("model", "base_url", "endpoint", "dataset", "date", "seekd_commit"):
        table.add_row(
            key, *(str(result.get(key, "-")) for result in results), *extra, end_section=key == "seekd_commit"
        )
    for i in range(max(len(result["runs"]) for result in results)):
        runs = [result["runs"][i] if i < len(result["runs"]) else None for result in results]
        table.add_row("[bold]request rate[/bold]", *(run["label"] if run else "-" for run in runs), *extra)
        for j, (metric, key, sub, higher_better) in enumerate(KEY_METRICS):
            values = [None if run is None else _value(run, key, sub) for run in runs]
            row = [metric, *(_fmt(v) for v in values)]
            if len(results) == 2:
                row.append(_change(values[0], values[1], higher_better))
            table.add_row(*row, end_section=j == len(KEY_METRICS) - 1)
    return table


def _change(old: float | None, new: float | None, higher_better: bool) -> str:
    if old is None or new is None or old == 0:
        return "-"
    change = new / old - 1
    colour = "green" if (change > 0) == higher_better else "red"
    return f"[{colour}]{change:+.1%}[/{colour}]" if abs(change) >= 0.005 else "0%"


def plot(result: dict[str, Any], path: Path) -> bool:
    """Latency percentiles and throughput/goodput against request rate, as a PNG.
    Returns False when matplotlib is not installed (`pip install seekd[bench]`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = result["runs"]
    x = list(range(len(runs)))
    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 4.5))
    for colour, (key, name) in zip(("C0", "C1", "C2"), (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("e2e_ms", "E2E"))):
        for q, style in (("p50", "-o"), ("p90", "--s"), ("p99", ":^")):
            lat.plot(x, [_value(r, key, q) or math.nan for r in runs], style, color=colour, label=f"{name} {q}")
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms)")
    lat.set_title("latency percentiles")
    thr.plot(x, [r["request_throughput"] for r in runs], "-o", label="throughput")
    if any(r.get("goodput") is not None for r in runs):
        slo = ", ".join(f"{k} <= {v:g}" for k, v in (result.get("slo") or {}).items() if v is not None)
        thr.plot(x, [r.get("goodput") or 0.0 for r in runs], "-s", label=f"goodput ({slo})")
    thr.set_ylabel("requests/s")
    thr.set_ylim(bottom=0)
    thr.set_title("throughput and goodput")
    for ax in (lat, thr):
        ax.set_xticks(x, [r["label"].replace(" (", "\n(") for r in runs], fontsize=8)
        ax.set_xlabel("request rate (req/s)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{result.get('model')} at {result.get('base_url')} — seekd bench serve", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
