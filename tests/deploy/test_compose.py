"""The Compose stack: the files validated by a maintained parser (check-jsonschema's bundled
compose-spec schema) and their references resolved, the Prometheus and Alertmanager configs by
`promtool` and `amtool` (Debian's prometheus and prometheus-alertmanager), the router config by
`seekd router`'s own loader, and the Vector config's wiring (Vector itself is not packaged here)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from seekd.ops.audit import AUDIT_FILE
from seekd.router.config import load_router_config

from .conftest import COMPOSE_DIR, DEPLOY, compose, example_env, interpolate

COMPOSE_FILES = ("compose.yaml", "compose.gpu.yaml")
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian: prometheus) is not installed"
)
needs_amtool = pytest.mark.skipif(
    shutil.which("amtool") is None, reason="amtool (Debian: prometheus-alertmanager) is not installed"
)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_files_match_the_compose_spec(name: str, tmp_path: Path) -> None:
    if shutil.which("check-jsonschema") is None:
        pytest.skip("check-jsonschema is not installed")
    interpolated = tmp_path / name
    interpolated.write_text(json.dumps(compose(name)))
    for path in (COMPOSE_DIR / name, interpolated):  # as written, and as Compose reads it
        result = subprocess.run(
            ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_misspelt_key(tmp_path: Path) -> None:
    if shutil.which("check-jsonschema") is None:
        pytest.skip("check-jsonschema is not installed")
    stack = compose()
    stack["services"]["redis"]["helthcheck"] = stack["services"]["redis"].pop("healthcheck")
    path = tmp_path / "compose.json"
    path.write_text(json.dumps(stack))
    result = subprocess.run(["check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)])
    assert result.returncode != 0


def test_compose_references_resolve() -> None:
    stack = compose()
    services = stack["services"]
    for name, service in services.items():
        for dep in service.get("depends_on", []):
            assert dep in services, (name, dep)
        for config in service.get("configs", []):
            assert config["source"] in stack["configs"], (name, config)
        for secret in service.get("secrets", []):
            assert secret in stack["secrets"], (name, secret)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith(("/", ".")):
                assert source in stack["volumes"], (name, volume)
    for config in stack["configs"].values():
        if "file" in config:
            assert (COMPOSE_DIR / config["file"]).is_file(), config
    assert set(compose("compose.gpu.yaml")["services"]) <= set(services)


def test_compose_needs_the_secrets_it_uses() -> None:
    env = example_env()
    for variable in ("SEEKD_API_KEY", "SEEKD_ROUTER_CLIENT_KEY", "SMTP_SMARTHOST", "ALERT_EMAIL_TO"):
        without = {k: v for k, v in env.items() if k != variable}
        with pytest.raises(ValueError, match=variable):
            interpolate((COMPOSE_DIR / "compose.yaml").read_text(), without)


def test_router_config_loads_and_uses_the_stacks_redis() -> None:
    router = load_router_config(COMPOSE_DIR / "router.yaml")
    assert router.cache.enabled and router.cache.redis_url.startswith("redis://redis:")
    assert Path(router.spill.audit_log).parent == Path("/var/lib/seekd")  # the router's data volume
    assert "redis" in compose()["services"]["router"]["depends_on"]


@needs_promtool
def test_promtool_accepts_the_stacks_prometheus_config(tmp_path: Path) -> None:
    key = tmp_path / "seekd_api_key"
    key.write_text(example_env()["SEEKD_API_KEY"])
    (tmp_path / "alerts.yml").write_text((DEPLOY / "prometheus" / "alerts.yml").read_text())
    config = tmp_path / "prometheus.yml"
    config.write_text((COMPOSE_DIR / "prometheus.yml").read_text().replace("/run/secrets/seekd_api_key", str(key)))
    result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    mounts = {c["target"] for c in compose()["services"]["prometheus"]["configs"]}
    assert mounts == {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"}


def alertmanager_config() -> str:
    return compose()["configs"]["alertmanager"]["content"]


@needs_amtool
def test_amtool_accepts_the_alertmanager_config_with_the_smtp_settings_from_env(tmp_path: Path) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(alertmanager_config())
    result = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    env = example_env()
    assert config["global"]["smtp_smarthost"] == env["SMTP_SMARTHOST"]
    assert config["receivers"][0]["email_configs"][0]["to"] == env["ALERT_EMAIL_TO"]


@needs_amtool
def test_amtool_routes_critical_and_warning_alerts_to_the_email_receiver(tmp_path: Path) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(alertmanager_config())
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for rule in (r for group in alerts["groups"] for r in group["rules"]):
        labels = [f"alertname={rule['alert']}", f"severity={rule['labels']['severity']}"]
        result = subprocess.run(
            ["amtool", "config", "routes", "test", "--config.file", str(path), *labels], capture_output=True, text=True
        )
        assert result.returncode == 0 and result.stdout.strip() == "oncall-email", result.stdout + result.stderr


def test_grafana_provisions_the_dashboard_and_a_default_prometheus() -> None:
    stack = compose()
    datasources = yaml.safe_load((COMPOSE_DIR / "grafana" / "datasources.yaml").read_text())["datasources"]
    default = [d for d in datasources if d.get("isDefault")]
    assert [d["type"] for d in default] == ["prometheus"]  # the dashboard's datasource variable picks it
    assert {d["url"].split("//")[1].split(":")[0] for d in datasources} <= set(stack["services"])
    provider = yaml.safe_load((COMPOSE_DIR / "grafana" / "dashboards.yaml").read_text())["providers"][0]
    mounts = {c["source"]: c["target"] for c in stack["services"]["grafana"]["configs"]}
    assert Path(mounts["dashboard"]).parent == Path(provider["options"]["path"])
    assert stack["configs"]["dashboard"]["file"] == "../grafana/seekd.json"


def vector_config() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "vector.yaml").read_text())


def test_vector_pipeline_is_wired_to_what_the_stack_writes() -> None:
    config, stack = vector_config(), compose()
    components = set(config["sources"]) | set(config["transforms"])
    for section in ("transforms", "sinks"):
        for name, component in config[section].items():
            assert component["inputs"] and set(component["inputs"]) <= components, (name, component["inputs"])
    consumed = {i for c in [*config["transforms"].values(), *config["sinks"].values()] for i in c["inputs"]}
    assert components <= consumed  # nothing read and dropped
    # the container source picks the services that log JSON (SEEKD_LOG_FORMAT=json, log_format: json)
    label = config["sources"]["containers"]["include_labels"][0].split("=")
    labelled = {n for n, s in stack["services"].items() if s.get("labels", {}).get(label[0]) == label[1]}
    assert labelled == {"seekd-1", "seekd-2", "router"}
    # the audit files are where the server and router write them, on volumes Vector mounts
    router = load_router_config(COMPOSE_DIR / "router.yaml")
    patterns = config["sources"]["audit_files"]["include"]
    assert {Path(p).name for p in patterns} == {AUDIT_FILE, Path(router.spill.audit_log).name}
    vector_mounts = {v.split(":")[1] for v in stack["services"]["vector"]["volumes"]}
    assert {f"/audit/{name}" for name in labelled} <= vector_mounts
    sink = config["sinks"]["loki"]
    assert sink["type"] == "loki" and sink["endpoint"].split("//")[1].split(":")[0] in stack["services"]


def test_vector_validates_its_config() -> None:
    if shutil.which("vector") is None:
        pytest.skip("vector is not packaged for Debian, PyPI or npm here; its wiring is checked above")
    result = subprocess.run(
        ["vector", "validate", "--no-environment", str(COMPOSE_DIR / "vector.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
