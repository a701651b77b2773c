"""One real `seekd serve` (built-in random-weight DeepSeek-V4 demo) per test module, for the client
libraries that users point at it: the openai SDK and LangChain."""

from __future__ import annotations

from pathlib import Path

import pytest
from live_server import ServerHandle, running_server

MODEL = "seekd-demo-random"
THINKING = {"chat_template_kwargs": {"thinking": True}}  # vLLM's spelling; DeepSeek's is {"thinking": {...}}


@pytest.fixture(scope="module")
def server(data_dir: Path, tmp_path_factory) -> ServerHandle:
    log_path = tmp_path_factory.mktemp("server-log") / "server.log"
    with running_server(data_dir, log_path) as handle:
        yield handle
        assert "Traceback" not in handle.log(), handle.log()[-4000:]
