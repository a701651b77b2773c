"""Every metric name, `SEEKD_*` variable, port and probe path that deploy/ names exists in the code:
a metric the server or router exports, a config field `seekd serve` reads, the port it listens on, a
route that answers without a key. A rename on either side fails here."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from seekd.config import config_fields, load_config
from seekd.ops.auth import PROBE_PATHS, PUBLIC_PATHS
from seekd.ops.gpu import GPU_METRICS
from seekd.router.backends import BackendRegistry
from seekd.router.config import BreakerConfig, RouterConfig, load_router_config, router_config_from_dict
from seekd.router.metrics import RouterMetrics

from .conftest import COMPOSE_DIR, DEPLOY, VALUES_FILES, compose, dockerfile_env, env_file, kind, render_chart

pytestmark = pytest.mark.slow

METRIC = re.compile(r"seekd:[A-Za-z0-9_:]+")
ENV_VAR = re.compile(r"\bSEEKD_[A-Z0-9_]+\b")
# `seekd:<tag>` in deploy/ that are image references, not metrics
IMAGE_TAGS = {"seekd:cpu", "seekd:cuda"}
CONFIG_ENV = {f"SEEKD_{name.upper()}" for name in config_fields()}
ROUTER_NAMES = RouterMetrics(BackendRegistry([], BreakerConfig())).names()
GPU_NAMES = {name for name, _ in GPU_METRICS.values()}


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


def router_env_names(config: RouterConfig) -> set[str]:
    """The environment variables a router config makes `seekd router` read."""
    names = {config.admin_key_env, config.spill.api_key_env}
    names |= {k.key_env for k in config.keys} | {b.api_key_env for b in config.backends}
    return names - {""}


def shipped_router_configs() -> list[RouterConfig]:
    charts = [chart_router_config(render_chart(values)) for values in VALUES_FILES]
    return [load_router_config(COMPOSE_DIR / "router.yaml"), *charts]


def chart_router_config(manifests: list[dict]) -> RouterConfig:
    """The router.yaml the chart's ConfigMap holds, read as `seekd router` reads it."""
    return router_config_from_dict(yaml.safe_load(kind(manifests, "ConfigMap", "seekd-router")["data"]["router.yaml"]))


def unknown_names(text: str, exported: set[str], readable_env: set[str]) -> set[str]:
    """The metric names and SEEKD_ variables in `text` that the code neither exports nor reads."""
    metrics = set(METRIC.findall(text)) - IMAGE_TAGS - exported
    return metrics | (set(ENV_VAR.findall(text)) - readable_env)


def exported_metrics(server) -> set[str]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=5.0, **server.client_options).text
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names | GPU_NAMES | ROUTER_NAMES


def test_deploy_names_only_metrics_and_variables_the_code_has(deployed_server) -> None:
    exported = exported_metrics(deployed_server)
    readable_env = CONFIG_ENV | {RouterConfig.admin_key_env}
    for config in shipped_router_configs():
        readable_env |= router_env_names(config)
    problems = {}
    for path in deploy_files():
        unknown = unknown_names(path.read_text(errors="replace"), exported, readable_env)
        if unknown:
            problems[str(path.relative_to(DEPLOY))] = sorted(unknown)
    assert not problems, f"deploy/ names what the code does not export or read: {problems}"
    # the checks saw the names they guard
    all_text = "\n".join(p.read_text(errors="replace") for p in deploy_files())
    assert {"seekd:num_requests_waiting", "seekd:request_queue_time_seconds_sum"} <= set(METRIC.findall(all_text))
    assert {"SEEKD_API_KEY", "SEEKD_DRAIN_TIMEOUT_S", "SEEKD_ROUTER_CLIENT_KEY"} <= set(ENV_VAR.findall(all_text))


def test_drift_check_reports_a_renamed_metric_and_an_unknown_variable(deployed_server) -> None:
    exported = exported_metrics(deployed_server)
    text = (
        "expr: rate(seekd:http_requests_total[5m]) and seekd:num_requests_queued\nSEEKD_MAX_NUM_SEQS=8 SEEKD_MAX_SEQS=8"
    )
    assert unknown_names(text, exported, CONFIG_ENV) == {"seekd:num_requests_queued", "SEEKD_MAX_SEQS"}


def test_the_images_env_and_compose_settings_are_config_the_server_accepts() -> None:
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        env = {k: v for k, v in dockerfile_env(DEPLOY / "docker" / dockerfile).items() if k.startswith("SEEKD_")}
        config = load_config(environ={**env, **env_file(COMPOSE_DIR / "seekd.env")})
        assert (config.server.host, config.server.port, config.server.log_format) == ("0.0.0.0", 8000, "json")
        assert config.storage.data_dir == "/var/lib/seekd"


def test_compose_ports_targets_and_router_backends_match_what_the_processes_listen_on() -> None:
    stack = compose()
    env = {**dockerfile_env(DEPLOY / "docker" / "Dockerfile"), **env_file(COMPOSE_DIR / "seekd.env")}
    config = load_config(environ={k: v for k, v in env.items() if k.startswith("SEEKD_")})
    replicas = sorted(name for name in stack["services"] if name.startswith("seekd-"))
    router = load_router_config(COMPOSE_DIR / "router.yaml")
    assert [b.url for b in router.backends] == [f"http://{r}:{config.server.port}" for r in replicas]
    assert all(b.models == [config.model.display_name] for b in router.backends)
    service = stack["services"]["router"]
    assert service["ports"][0].endswith(f":{router.listen.port}")
    assert service["healthcheck"]["test"][-1] == str(router.listen.port)
    assert router_env_names(router) <= set(service["environment"])
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]}
    assert targets["seekd"] == [f"{r}:{config.server.port}" for r in replicas]
    assert targets["seekd-router"] == [f"router:{router.listen.port}"]


@pytest.mark.parametrize("values", VALUES_FILES)
def test_chart_ports_probes_and_router_match_the_code(values: str) -> None:
    manifests = render_chart(values)
    pod = kind(manifests, "StatefulSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    config = load_config(environ={k: v for k, v in env.items() if v is not None})
    assert container["ports"][0]["containerPort"] == config.server.port
    assert container["livenessProbe"]["httpGet"]["path"] in PUBLIC_PATHS
    assert container["readinessProbe"]["httpGet"]["path"] in PROBE_PATHS  # answers a keyless probe
    assert container["startupProbe"]["httpGet"]["path"] in PROBE_PATHS
    router_pod = kind(manifests, "Deployment")["spec"]["template"]["spec"]
    (router_container,) = router_pod["containers"]
    router = chart_router_config(manifests)
    assert router_container["ports"][0]["containerPort"] == router.listen.port
    assert router_env_names(router) <= {e["name"] for e in router_container["env"]}
    assert all(b.url.endswith(f":{config.server.port}") for b in router.backends)
    assert all(b.models == [config.model.display_name] for b in router.backends)
