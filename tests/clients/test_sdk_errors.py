"""Error responses as the openai SDK sees them: each status becomes the SDK's own exception class
(that is what clients catch and retry on), with `code`, `param` and `message` filled in.

The server here has an API key and a request rate limit of 3 a minute, so that 401 and 429 are
real; every refusal except the 429s costs no allowance (auth and validation come first).
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
from live_server import ServerHandle, running_server

from .conftest import MODEL

pytestmark = pytest.mark.slow

API_KEY = "sk-seekd-clients-test"
REQUESTS_PER_MIN = 3


@pytest.fixture(scope="module")
def server(data_dir: Path, tmp_path_factory) -> ServerHandle:
    log_path = tmp_path_factory.mktemp("server-log") / "server.log"
    extra = ("--api-key", API_KEY, "--rate-limit-requests-per-min", str(REQUESTS_PER_MIN))
    auth = {"headers": {"authorization": f"Bearer {API_KEY}"}}
    with running_server(data_dir, log_path, *extra, client_options=auth) as handle:
        yield handle
        assert "Traceback" not in handle.log()


def client(server: ServerHandle, key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_url, api_key=key, max_retries=0, timeout=60)


def test_wrong_key_is_authentication_error(server: ServerHandle) -> None:
    for key in ("sk-wrong", API_KEY[:-1]):
        with pytest.raises(openai.AuthenticationError) as info:
            client(server, key).models.list()
        assert info.value.status_code == 401 and info.value.body["type"] == "authentication_error"
        assert info.value.code and info.value.message


def test_bad_request_not_found_and_rate_limit_classes(server: ServerHandle) -> None:
    sdk = client(server)
    assert sdk.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as info:
        sdk.models.retrieve("deepseek-ai/DeepSeek-R1")  # an org/model id is one path segment here
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=7)
    assert info.value.param == "temperature" and "temperature" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            max_tokens=1,
            extra_body={"thinking": {"type": "sometimes"}},
        )
    assert info.value.param and info.value.param.startswith("thinking")
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=1)
    with pytest.raises(openai.RateLimitError) as info:  # 3 a minute: the 4th is refused at once
        for _ in range(REQUESTS_PER_MIN + 1):
            sdk.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert info.value.status_code == 429 and info.value.code == "rate_limit_exceeded"
    assert int(info.value.response.headers["retry-after"]) >= 1
