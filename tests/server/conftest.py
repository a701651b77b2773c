"""A real `seekd serve` subprocess on a free loopback port, shared by the tests of a module."""

from __future__ import annotations

from pathlib import Path

import pytest
from live_server import MAX_REQUEST_BODY_BYTES, ServerHandle, free_port, running_server

__all__ = ["MAX_REQUEST_BODY_BYTES", "ServerHandle", "free_port", "running_server"]


@pytest.fixture(scope="module")
def server(data_dir: Path, tmp_path_factory) -> ServerHandle:
    log_path = tmp_path_factory.mktemp("server-log") / "server.log"
    with running_server(data_dir, log_path) as handle:
        yield handle
