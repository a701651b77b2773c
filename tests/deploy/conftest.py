"""What the deploy tests share: the files under deploy/, Compose's variable interpolation, the Helm
chart rendered by Helm's own engine, and one real `seekd serve` configured the way the images are."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from live_server import ServerHandle, free_port, running_process

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
CHART = DEPLOY / "helm" / "seekd"
VALUES_FILES = ("values-1gpu.yaml", "values-8gpu.yaml", "values-cpu.yaml")
# What an operator passes besides a values file: the chart refuses to render without keys.
SECRET_VALUES = {"apiKey": {"value": "sk-test-admin"}, "router": {"clientKey": "sk-test-client"}}
API_KEY = "sk-test-deploy"

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$`, as `docker compose config` does."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?") and not value:
            raise ValueError(f"{name}: {arg}")
        return value or ""

    return _VARIABLE.sub(one, text)


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines; comments and blank lines skipped."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def example_env() -> dict[str, str]:
    return env_file(COMPOSE_DIR / ".env.example")


def compose(name: str = "compose.yaml") -> dict[str, Any]:
    """A Compose file as Compose reads it: variables from .env.example, then YAML (merge keys applied)."""
    return yaml.safe_load(interpolate((COMPOSE_DIR / name).read_text(), example_env()))


def dockerfile_env(path: Path) -> dict[str, str]:
    """The `ENV` of a Dockerfile's last stage (KEY=value pairs, continued lines joined)."""
    text = path.read_text().replace("\\\n", " ")
    last_stage = text.split("\nFROM ")[-1]
    env: dict[str, str] = {}
    for line in last_stage.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in line[4:].split())
    return env


def render_chart(values_file: str, extra: dict | None = None) -> list[dict]:
    """Every manifest of the chart for one values file, rendered by Helm's engine (helm-python-sdk)."""
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK) is not installed")
    values = {**yaml.safe_load((CHART / values_file).read_text()), **SECRET_VALUES, **(extra or {})}
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="seekd", namespace="llm")
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def kind(manifests: list[dict], kind_name: str, name: str | None = None) -> dict:
    found = [m for m in manifests if m["kind"] == kind_name and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind_name} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def deployed_server(tmp_path_factory) -> ServerHandle:
    """`seekd serve` with the images' ENV and Compose's seekd.env, the way a container starts it
    (loopback and a free port instead of 0.0.0.0:8000, the demo model, a small KV cache)."""
    data_dir = tmp_path_factory.mktemp("deploy-data")
    port = free_port()
    env = {
        **dockerfile_env(DEPLOY / "docker" / "Dockerfile"),
        **env_file(COMPOSE_DIR / "seekd.env"),
        "SEEKD_HOST": "127.0.0.1",
        "SEEKD_PORT": str(port),
        "SEEKD_DATA_DIR": str(data_dir),
        "SEEKD_NUM_KV_BLOCKS": "256",
        "SEEKD_API_KEY": API_KEY,
    }
    env.pop("PATH", None)
    log_path = data_dir / "server.log"
    cmd = [sys.executable, "-m", "seekd.cli", "serve"]
    with running_process(cmd, log_path, f"http://127.0.0.1:{port}/ready", "server", env=env) as process:
        yield ServerHandle(
            f"http://127.0.0.1:{port}", process, log_path, {"headers": {"Authorization": f"Bearer {API_KEY}"}}
        )
