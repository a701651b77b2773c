"""Hostile request bodies against a live `seekd serve` (demo model): every malformed, mistyped or
out-of-range body gets an OpenAI error object with a 4xx status, never a 5xx, and the server keeps
serving with correct output afterwards. Complements test_fuzz_schema.py (schema-driven cases) with
the inputs a schema cannot generate: non-JSON literals (NaN, Infinity), lone UTF-16 surrogates,
non-object bodies, wrong content types, and fields that clash with the server's own arguments."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .conftest import ServerHandle

pytestmark = pytest.mark.slow

COMPLETIONS = "/completions"
CHAT = "/chat/completions"
USER_X = '"messages":[{"role":"user","content":"x"}],"max_tokens":2'


def _chat(extra: str) -> bytes:
    return ("{" + USER_X + ("," + extra if extra else "") + "}").encode()


def post(server: ServerHandle, path: str, body: bytes, content_type: str | None = "application/json") -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return httpx.post(f"{server.api_url}{path}", content=body, headers=headers, timeout=60)


def openai_error(response: httpx.Response) -> dict:
    payload = response.json()
    assert set(payload) == {"error"}, payload
    error = payload["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    return error


# (path, body, expected param or None, expected code or None): each must be a 400.
BAD_BODIES = [
    # not a JSON object
    (COMPLETIONS, b"", None, None),
    (COMPLETIONS, b"null", None, None),
    (COMPLETIONS, b"[]", None, None),
    (COMPLETIONS, b"[1, 2]", None, None),
    (CHAT, b"3", None, None),
    (CHAT, b'"a string"', None, None),
    (COMPLETIONS, b'{"prompt": "x", "max_tokens": ', None, "invalid_json"),
    (COMPLETIONS, b'{"prompt": "x"} trailing', None, "invalid_json"),
    # bodies FastAPI cannot decode at all once got a bare "There was an error parsing the body"
    (COMPLETIONS, b'{"prompt": "\xff", "max_tokens": 2}', None, "invalid_json"),
    (COMPLETIONS, b"\x00{}", None, "invalid_json"),
    (COMPLETIONS, b'{"prompt": "x", "max_tokens": ' + b"1" * 5000 + b"}", None, "invalid_json"),
    # JSON extensions Python's parser accepts
    (COMPLETIONS, b'{"prompt": "x", "temperature": NaN}', "temperature", None),
    (COMPLETIONS, b'{"prompt": "x", "temperature": Infinity}', "temperature", None),
    (COMPLETIONS, b'{"prompt": "x", "top_p": NaN}', "top_p", None),
    (COMPLETIONS, b'{"prompt": "x", "timeout": NaN}', "timeout", None),
    (COMPLETIONS, b'{"prompt": "x", "frequency_penalty": -Infinity}', "frequency_penalty", None),
    (COMPLETIONS, b'{"prompt": "x", "max_tokens": 1e400}', "max_tokens", None),
    (COMPLETIONS, b'{"prompt": "x", "temperature": 1e308}', "temperature", None),
    (COMPLETIONS, b'{"prompt": "x", "max_tokens": 1000000000000000000000000000000}', "max_tokens", None),
    # wrong types and ranges
    (COMPLETIONS, b'{"prompt": "x", "max_tokens": 5.5}', "max_tokens", None),
    (COMPLETIONS, b'{"prompt": "x", "seed": 1.5}', "seed", None),
    (COMPLETIONS, b'{"prompt": "x", "max_tokens": 0}', "max_tokens", None),
    (COMPLETIONS, b'{"prompt": "x", "logprobs": 21}', "logprobs", None),
    (COMPLETIONS, b'{"prompt": "x", "logprobs": -1}', "logprobs", None),
    (COMPLETIONS, b'{"prompt": "x", "logit_bias": [1]}', "logit_bias", None),
    (COMPLETIONS, b'{"prompt": "x", "logit_bias": {"not a token": 1}}', "logit_bias", None),
    # more entries than OpenAI takes (300): the sampler rebuilds every entry of every row each step,
    # and 64,000 entries with n=16 made the request 30x slower and every other request's steps with it
    (
        COMPLETIONS,
        b'{"prompt": "x", "logit_bias": {' + b", ".join(b'"%d": -1' % i for i in range(301)) + b"}}",
        "logit_bias",
        None,
    ),
    (COMPLETIONS, b'{"prompt": "x", "user": 5}', "user", None),
    # the engine scans the list for every token of every choice (and bans all of it per step under
    # min_tokens): 100,000 ids with n=16 made the request, and every request batched with it, 7x slower
    (COMPLETIONS, b'{"prompt": "x", "stop_token_ids": [' + b", ".join([b"7"] * 1025) + b"]}", "stop_token_ids", None),
    (COMPLETIONS, b'{"prompt": "x", "model": 5}', "model", None),
    (COMPLETIONS, b'{"prompt": "x", "stream_options": 5}', "stream_options", None),
    (COMPLETIONS, b'{"prompt": "x", "max_tokens": 2, "min_tokens": 5}', None, None),
    (CHAT, _chat('"n": 1000000'), "n", None),
    (CHAT, _chat('"logprobs": true, "top_logprobs": -1'), "top_logprobs", None),
    (CHAT, _chat('"top_logprobs": 3'), "top_logprobs", None),
    (CHAT, _chat('"response_format": "json"'), "response_format", None),
    (CHAT, _chat('"tools": "x"'), "tools", None),
    (CHAT, _chat('"tools": [5]'), "tools.0", None),
    # prompts
    (COMPLETIONS, b'{"prompt": null}', None, None),
    (COMPLETIONS, b"{}", "prompt", None),
    (COMPLETIONS, b'{"prompt": "", "max_tokens": 2}', "prompt", None),
    (COMPLETIONS, b'{"prompt": [[]], "max_tokens": 2}', "prompt", None),
    (COMPLETIONS, b'{"prompt": [[1], []], "max_tokens": 2}', "prompt", None),
    (COMPLETIONS, b'{"prompt": [-1], "max_tokens": 2}', None, None),
    (COMPLETIONS, b'{"prompt": [1, "a"], "max_tokens": 2}', None, None),
    (COMPLETIONS, b'{"prompt": [999999999], "max_tokens": 2}', None, None),
    # more sequences in one request than the engine runs at once (256 here): admitted into an idle
    # engine, 20,000 one-letter prompts held every other request back for minutes
    (
        COMPLETIONS,
        b'{"prompt": [' + b", ".join([b'"a"'] * 257) + b'], "max_tokens": 2}',
        "prompt",
        "too_many_sequences",
    ),
    (
        COMPLETIONS,
        b'{"prompt": [' + b", ".join([b"[1]"] * 17) + b'], "n": 16, "max_tokens": 2}',
        "prompt",
        "too_many_sequences",
    ),
    # messages
    (CHAT, b'{"messages": []}', "messages", None),
    (CHAT, b'{"messages": [{}]}', "messages.0.role", None),
    (CHAT, b'{"messages": [{"content": "x"}]}', "messages.0.role", None),
    (CHAT, b'{"messages": [{"role": "tool", "content": "x"}], "max_tokens": 2}', "messages.0.tool_call_id", None),
    (CHAT, b'{"messages": [{"role": "bogus", "content": "x"}], "max_tokens": 2}', "messages", None),
    # assistant tool_calls that are not a list: a number was iterated (TypeError, 500)
    (
        CHAT,
        b'{"messages": [{"role": "assistant", "tool_calls": 5}, {"role": "user", "content": "x"}], "max_tokens": 2}',
        "messages.0.tool_calls",
        None,
    ),
    (
        CHAT,
        b'{"messages": [{"role": "assistant", "tool_calls": "call"}], "max_tokens": 2}',
        "messages.0.tool_calls",
        None,
    ),
    (
        CHAT,
        b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}], "max_tokens": 2}',
        "messages.0.content.0",
        None,
    ),
    # a text part without text once got "part type 'text' is not supported (only 'text')"
    (
        CHAT,
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": null}]}], "max_tokens": 2}',
        "messages.0.content",
        None,
    ),
    # keys the server passes to the chat template itself: a copy in chat_template_kwargs was a TypeError (500)
    (CHAT, _chat('"chat_template_kwargs": {"messages": 1}'), "chat_template_kwargs", None),
    (CHAT, _chat('"chat_template_kwargs": {"tools": 1}'), "chat_template_kwargs", None),
    (CHAT, _chat('"chat_template_kwargs": {"add_generation_prompt": 5}'), "chat_template_kwargs", None),
    # lone UTF-16 surrogates: each was a 500 (tokenizer TypeError, UnicodeEncodeError in stop strings,
    # grammar compilation, the unknown-model 404 and the access log)
    (COMPLETIONS, b'{"prompt": "\\ud800", "max_tokens": 2}', "prompt", "invalid_unicode"),
    (COMPLETIONS, b'{"prompt": ["ok", "a\\udfffb"], "max_tokens": 2}', "prompt.1", "invalid_unicode"),
    (COMPLETIONS, b'{"prompt": "\xed\xa0\x80", "max_tokens": 2}', "prompt", "invalid_unicode"),
    (COMPLETIONS, b'{"prompt": "x", "stop": "\\ud800", "max_tokens": 2}', "stop", "invalid_unicode"),
    (COMPLETIONS, b'{"prompt": "x", "stop": ["ok", "\\udfff\\ud800"], "max_tokens": 2}', "stop.1", "invalid_unicode"),
    (COMPLETIONS, b'{"prompt": "x", "model": "\\ud800"}', "model", "invalid_unicode"),
    (COMPLETIONS, b'{"prompt": "x", "\\ud800": 1}', "\\ud800", "invalid_unicode"),
    (
        CHAT,
        b'{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}',
        "messages.0.content",
        "invalid_unicode",
    ),
    (
        CHAT,
        b'{"messages": [{"role": "user", "content": "x", "name": "\\udc00"}], "max_tokens": 2}',
        "messages.0.name",
        "invalid_unicode",
    ),
    (
        CHAT,
        _chat('"tools": [{"type": "function", "function": {"name": "f", "description": "\\udc00"}}]'),
        "tools.0.function.description",
        "invalid_unicode",
    ),
    (
        CHAT,
        _chat(
            '"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": '
            '{"type": "object", "properties": {"\\ud800": {"type": "string"}}}}}'
        ),
        "response_format.json_schema.schema.properties.\\ud800",
        "invalid_unicode",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "param", "code"),
    BAD_BODIES,
    ids=[f"{i}-{body[:40]!r}" for i, (_, body, _, _) in enumerate(BAD_BODIES)],
)
def test_bad_body_gets_an_openai_400(
    server: ServerHandle, path: str, body: bytes, param: str | None, code: str | None
) -> None:
    response = post(server, path, body)
    assert response.status_code == 400, response.text
    error = openai_error(response)
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error


# Fields OpenAI's API spec declares nullable, null meaning the default: clients generated from that spec
# send null for every unset field. Each was a 400 ("Input should be a valid integer/boolean").
NULLABLE = [
    (CHAT, '"n": null, "stream": null, "logprobs": null', '"n": 1, "stream": false, "logprobs": false'),
    (COMPLETIONS, '"n": null, "stream": null, "echo": null', '"n": 1, "stream": false, "echo": false'),
]


@pytest.mark.parametrize(("path", "nulls", "defaults"), NULLABLE, ids=["chat", "completions"])
def test_null_in_an_openai_nullable_field_means_its_default(
    server: ServerHandle, path: str, nulls: str, defaults: str
) -> None:
    common = '"messages": [{"role": "user", "content": "x"}]' if path == CHAT else '"prompt": "x"'
    common += ', "max_tokens": 3, "temperature": 0'
    responses = [post(server, path, ("{" + common + ", " + fields + "}").encode()) for fields in (nulls, defaults)]
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"  # not streamed
    with_nulls, with_defaults = (r.json()["choices"] for r in responses)
    assert len(with_nulls) == 1 and with_nulls == with_defaults


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"]
)
def test_a_body_that_is_not_declared_json_is_a_400(server: ServerHandle, content_type: str | None) -> None:
    response = post(server, COMPLETIONS, b'{"prompt": "x", "max_tokens": 2}', content_type)
    assert response.status_code == 400, response.text
    openai_error(response)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", COMPLETIONS, 405),
        ("PUT", CHAT, 405),
        ("DELETE", CHAT, 405),
        ("POST", "/models", 405),
        ("POST", "/no-such-route", 404),
    ],
)
def test_wrong_method_or_route_is_an_openai_error(server: ServerHandle, method: str, path: str, status: int) -> None:
    response = httpx.request(method, f"{server.api_url}{path}", content=b"{}", timeout=30)
    assert response.status_code == status
    openai_error(response)


def test_valid_but_unusual_text_is_served(server: ServerHandle) -> None:
    """Well-formed Unicode of every kind goes through: paired surrogate escapes (emoji from
    ensure_ascii clients), NUL, right-to-left marks, and strings with brackets."""
    texts = ["\U0001f600 emoji", "a\x00b", "\u202eRTL\u202c text", "[[{{", "你好"]
    for text in texts:
        body = json.dumps({"prompt": text, "max_tokens": 2, "stop": [text]}, ensure_ascii=True).encode()
        assert b"\\ud83d\\ude00" in body or "\U0001f600" not in text
        response = post(server, COMPLETIONS, body)
        assert response.status_code == 200, (text, response.text)
        chat = json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": 2}).encode()
        assert post(server, CHAT, chat).status_code == 200


def test_many_and_long_stop_strings_are_served(server: ServerHandle) -> None:
    body = {"prompt": "x", "max_tokens": 4, "ignore_eos": True, "stop": [f"stop-{i}" for i in range(2000)]}
    response = post(server, COMPLETIONS, json.dumps(body).encode())
    assert response.status_code == 200, response.text
    body["stop"] = "z" * 50_000
    response = post(server, COMPLETIONS, json.dumps(body).encode())
    assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] == "length"


def test_a_conversation_of_many_short_messages_is_encoded_in_linear_time(server: ServerHandle) -> None:
    """20,000 one-letter turns (730 KB, under the body limit): the prompt encoder looked up the last
    user turn once per message, quadratic work on the event loop that froze the whole server for
    about a minute (every other client's requests and /health included) before the 400."""
    turns = [{"role": ("user", "assistant")[i % 2], "content": "a"} for i in range(20_000)]
    start = time.monotonic()
    response = post(server, CHAT, json.dumps({"messages": turns, "max_tokens": 2}).encode())
    took = time.monotonic() - start
    assert response.status_code == 400 and openai_error(response)["code"] == "context_length_exceeded"
    assert took < 15, f"{took:.1f} s for 20,000 messages"


def test_server_serves_correctly_after_the_hostile_inputs(server: ServerHandle) -> None:
    body = json.dumps({"prompt": "hello there", "max_tokens": 6, "temperature": 0, "ignore_eos": True}).encode()
    first = post(server, COMPLETIONS, body)
    second = post(server, COMPLETIONS, body)
    assert first.status_code == second.status_code == 200
    assert first.json()["choices"][0]["text"] == second.json()["choices"][0]["text"]
    assert first.json()["usage"]["completion_tokens"] == 6
    assert server.process.poll() is None
    assert "Traceback" not in server.log() and "unhandled error" not in server.log()


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\x01 / HTTP/1.1\r\n\r\n",  # bad request line
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",  # header without a colon
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n\r\n",  # bad chunk size
    ],
)
def test_unparseable_http_gets_an_openai_error_object(server: ServerHandle, raw: bytes) -> None:
    """uvicorn answers these before the application runs; the body is still {"error": {...}}."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(server.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(raw)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "malformed_http"
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
