"""The shipped Grafana dashboard and Prometheus alert rules only name metrics the real server exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from seekd.ops.gpu import GPU_METRICS
from seekd.router.backends import BackendRegistry
from seekd.router.config import BreakerConfig
from seekd.router.metrics import RouterMetrics

from .conftest import ServerHandle, metric_names

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "seekd.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yml")
METRIC = re.compile(r"seekd:[A-Za-z0-9_:]+")
# NVML metrics exist only where there is a GPU; their names come from the collector itself.
GPU_NAMES = {name for name, _ in GPU_METRICS.values()}
# The dashboard's router row reads `seekd router`'s own /metrics; its names come from its registry.
ROUTER_NAMES = RouterMetrics(BackendRegistry([], BreakerConfig())).names()


def dashboard_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition"):  # panel queries and template-variable queries
                yield value
            else:
                yield from dashboard_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_dashboard_names_only_metrics_the_server_exports(server: ServerHandle) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(dashboard_exprs(dashboard))
    assert len(exprs) >= len(dashboard["panels"])
    exported = metric_names(server) | GPU_NAMES | ROUTER_NAMES
    for expr in exprs:
        named = set(METRIC.findall(expr))
        assert named, f"no seekd metric in {expr!r}"
        assert named <= exported, f"{expr!r} names {named - exported}, which /metrics does not export"
    panel_ids = [p["id"] for p in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    router_row = [p for p in dashboard["panels"] if p["type"] == "row" and "Router" in p["title"]]
    assert router_row and any("seekd:router_" in expr for expr in exprs)


def test_alert_rules_name_only_metrics_the_server_exports(server: ServerHandle) -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "SeekdGpuTemperatureHigh",
        "SeekdGpuMemoryHigh",
        "SeekdHighErrorRate",
        "SeekdTimeToFirstTokenP99OverSlo",
        "SeekdQueueGrowing",
        "SeekdEngineRestarted",
    }
    exported = metric_names(server) | GPU_NAMES
    for rule in rules:
        named = set(METRIC.findall(rule["expr"]))
        assert named and named <= exported, (rule["alert"], named - exported)
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


# promtool ships in Debian's `prometheus` package; .ci/run could `apt-get install -y prometheus` to run these.
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_error_rate_and_temperature_alerts_fire_when_they_should() -> None:
    result = subprocess.run(
        ["promtool", "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"


@needs_promtool
def test_promtool_accepts_the_scrape_config_with_its_metrics_key(tmp_path: Path) -> None:
    """The shipped config as an operator installs it: its rules beside it, the key file in place."""
    key = tmp_path / "seekd-metrics.key"
    key.write_text("sk-seekd-example\n")
    (tmp_path / "alerts.yml").write_text(ALERTS.read_text())
    config = tmp_path / "prometheus.yml"
    config.write_text(PROMETHEUS.read_text().replace("/etc/prometheus/seekd-metrics.key", str(key)))
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
