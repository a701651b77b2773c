"""One real `seekd serve` (demo model, JSON logs) shared by the observability tests of a module."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server.conftest import ServerHandle, running_server


@pytest.fixture(scope="module")
def server(data_dir: Path, tmp_path_factory) -> ServerHandle:
    log_path = tmp_path_factory.mktemp("server-log") / "server.log"
    with running_server(data_dir, log_path, "--log-format", "json") as handle:
        yield handle


def scrape(server: ServerHandle) -> dict[str, float]:
    """Every sample of /metrics as `name{label="v",...}` -> value (labels sorted, model_name left out)."""
    response = httpx.get(f"{server.base_url}/metrics", timeout=5.0)
    response.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()) if k != "model_name")
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def metric_names(server: ServerHandle) -> set[str]:
    """Sample names on /metrics (`..._bucket`, `..._total` included) and their family names."""
    names = set()
    for key in scrape(server):
        names.add(key.split("{")[0])
    text = httpx.get(f"{server.base_url}/metrics", timeout=5.0).text
    names.update(family.name for family in text_string_to_metric_families(text))
    return names
