"""An async streaming client for any OpenAI-compatible server, timing each request.

Timings use `time.perf_counter` on the client: TTFT is send to the first chunk that carries text
(chat's role-only opening chunk does not count), ITL the gaps between text chunks. A chunk may carry
several tokens, so TPOT is (e2e - TTFT) / (output tokens - 1) with the token count taken from the
server's usage, or counted with the tokenizer where the server sends none.
Failures of every kind become a RequestResult with an error label; a run never stops on one.
A result also keeps what a soak needs to tell a completed request from a lost one: each choice's
finish_reason, whether the stream ended with `[DONE]`, and the OpenAI error object when the server sent one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from seekd.bench.workloads import BenchRequest
from seekd.text.tokenizer import Tokenizer

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


@dataclass
class RequestResult:
    ok: bool
    error: str | None = None  # HTTP status ("429"), "timeout", "connect", "stream" or the exception name
    error_detail: str = ""
    send_time: float = 0.0  # seconds after the run started
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2e: float = 0.0
    prompt_tokens: int | None = None  # from usage
    cached_tokens: int | None = None  # from usage.prompt_tokens_details
    output_tokens: int = 0
    usage_output_tokens: int | None = None
    text: str = ""
    status_code: int | None = None
    finish_reasons: dict[int, str] = field(default_factory=dict)  # choice index -> finish_reason, once sent
    saw_done: bool = False  # the stream ended with `data: [DONE]`
    disconnected: bool = False  # the client closed the stream on purpose (`disconnect_after`)
    error_object: dict[str, Any] | None = None  # the server's OpenAI error object ({"message": ..., ...})

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    model: str
    endpoint: str = "completions"
    ignore_eos: bool = False
    temperature: float | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    api_key: str | None = None
    timeout_s: float = 600.0

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + ENDPOINTS[self.endpoint]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def payload(self, request: BenchRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "stream": True, "stream_options": {"include_usage": True}}
        if self.endpoint == "chat":
            body["messages"] = request.chat_messages()
        else:
            body["prompt"] = request.prompt
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if self.ignore_eos:
            body["ignore_eos"] = True  # vLLM, SGLang and seekd honour it; others ignore unknown fields
        if self.temperature is not None:
            body["temperature"] = self.temperature
        return {**body, **self.extra_body}


def _chunk_text(chunk: dict[str, Any]) -> str:
    text = []
    for choice in chunk.get("choices") or []:
        if "text" in choice:
            text.append(choice.get("text") or "")
        delta = choice.get("delta") or {}
        for key in ("content", "reasoning_content", "reasoning"):
            text.append(delta.get(key) or "")
    return "".join(text)


def _error_object(data: Any) -> dict[str, Any] | None:
    """The `error` of an OpenAI error body, if `data` is one (a dict with a message)."""
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) and isinstance(error.get("message"), str) else None


def _record_error_response(result: RequestResult, status: int, body: bytes) -> None:
    result.error = str(status)
    result.error_detail = body.decode(errors="replace")[:500]
    with contextlib.suppress(ValueError):
        result.error_object = _error_object(json.loads(body))


def _record_finish_reasons(result: RequestResult, choices: list[dict[str, Any]]) -> None:
    for position, choice in enumerate(choices):
        if choice.get("finish_reason") is not None:
            result.finish_reasons[choice.get("index", position)] = choice["finish_reason"]


def _record_usage(result: RequestResult, usage: dict[str, Any]) -> None:
    result.prompt_tokens = usage.get("prompt_tokens")
    result.usage_output_tokens = usage.get("completion_tokens")
    result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")


async def _stream(
    client: httpx.AsyncClient,
    config: ClientConfig,
    payload: dict[str, Any],
    result: RequestResult,
    start: float,
    disconnect_after: int | None = None,
) -> None:
    last = start
    pieces = []
    async with client.stream("POST", config.url, json=payload, headers=config.headers) as response:
        result.status_code = response.status_code
        if response.status_code != 200:
            _record_error_response(result, response.status_code, await response.aread())
            return
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                result.saw_done = True
                break
            now = time.perf_counter()
            chunk = json.loads(data)
            if "error" in chunk:
                result.error, result.error_detail = "stream", json.dumps(chunk["error"])[:500]
                result.error_object = _error_object(chunk)
                return
            if text := _chunk_text(chunk):
                if result.ttft is None:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
                pieces.append(text)
            _record_finish_reasons(result, chunk.get("choices") or [])
            if usage := chunk.get("usage"):
                _record_usage(result, usage)
            if disconnect_after is not None and len(pieces) >= disconnect_after:
                result.disconnected = True  # leaving the block closes the connection mid-stream
                break
    result.text = "".join(pieces)
    result.ok = result.ttft is not None and not result.disconnected
    if result.disconnected:
        result.error, result.error_detail = "disconnected", f"closed by the client after {len(pieces)} chunks"
    elif not result.ok:
        result.error, result.error_detail = "stream", "the stream ended before any text"


def _message_text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return choice.get("text") or ""
    message = choice.get("message") or {}
    return (message.get("reasoning_content") or "") + (message.get("content") or "")


async def _blocking(
    client: httpx.AsyncClient, config: ClientConfig, payload: dict[str, Any], result: RequestResult
) -> None:
    """A non-streamed request: no TTFT or ITL, only e2e, the text and the finish reasons."""
    response = await client.post(config.url, json=payload, headers=config.headers)
    result.status_code = response.status_code
    if response.status_code != 200:
        _record_error_response(result, response.status_code, response.content)
        return
    data = response.json()
    choices = data.get("choices") or []
    result.text = "".join(_message_text(c) for c in choices)
    _record_finish_reasons(result, choices)
    if usage := data.get("usage"):
        _record_usage(result, usage)
    result.ok = bool(choices)
    if not result.ok:
        result.error, result.error_detail = "empty", "HTTP 200 without choices"


async def send_request(
    client: httpx.AsyncClient,
    config: ClientConfig,
    request: BenchRequest,
    tokenizer: Tokenizer | None = None,
    run_start: float = 0.0,
    *,
    overrides: dict[str, Any] | None = None,
    disconnect_after: int | None = None,
) -> RequestResult:
    """Send one request, streamed unless `overrides` (merged into the body) sets "stream" false;
    with `disconnect_after`, a stream is closed after that many text chunks. Never raises (except on
    cancellation)."""
    payload = {**config.payload(request), **(overrides or {})}
    streamed = payload.get("stream", True)
    if not streamed:
        payload.pop("stream_options", None)
    start = time.perf_counter()
    result = RequestResult(ok=False, send_time=start - run_start)
    try:
        if streamed:
            call = _stream(client, config, payload, result, start, disconnect_after)
        else:
            call = _blocking(client, config, payload, result)
        await asyncio.wait_for(call, config.timeout_s)
    except asyncio.TimeoutError:
        result.ok, result.error = False, "timeout"
        result.error_detail = f"no complete response within {config.timeout_s} s"
    except httpx.ConnectError as e:
        result.ok, result.error, result.error_detail = False, "connect", str(e)
    except Exception as e:  # any server's malformed stream is a counted failure, not a crashed run
        result.ok, result.error, result.error_detail = False, type(e).__name__, str(e)[:500]
    result.e2e = time.perf_counter() - start
    if result.usage_output_tokens is not None:
        result.output_tokens = result.usage_output_tokens
    elif tokenizer is not None:
        result.output_tokens = len(tokenizer.encode(result.text, add_special_tokens=False))
    else:  # no usage and no tokenizer: one token per text chunk is the best estimate
        result.output_tokens = len(result.itl) + (result.ttft is not None)
    return result


def arrival_offsets(num_requests: int, request_rate: float, seed: int) -> list[float]:
    """Poisson arrivals: exponential gaps of mean 1/rate, seeded; all at 0 for an infinite rate."""
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = random.Random(seed)
    offsets, t = [], 0.0
    for _ in range(num_requests):
        offsets.append(t)
        t += rng.expovariate(request_rate)
    return offsets


async def _warm_up(client: httpx.AsyncClient, config: ClientConfig) -> None:
    """One untimed GET first, so that the HTTP stack's lazy imports and first connection are not charged
    to the first request's TTFT (on a busy machine that alone was a quarter of a second)."""
    with contextlib.suppress(httpx.HTTPError):  # an unreachable server is reported per request by the timed run
        await client.get(
            config.base_url.rstrip("/") + "/v1/models", headers=config.headers, timeout=min(config.timeout_s, 10.0)
        )


async def run_load(
    config: ClientConfig,
    requests: Sequence[BenchRequest],
    request_rate: float = math.inf,
    max_concurrency: int | None = None,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    on_done: Callable[[RequestResult], None] | None = None,
) -> tuple[list[RequestResult], float]:
    """Send `requests` arriving at `request_rate` (Poisson), at most `max_concurrency` in flight.
    Returns the results in request order and the run's duration in seconds (first send to last end).
    A request that waits for a free slot starts its clock when it is sent, as vLLM's benchmark does."""
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
    timeout = httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 30.0))
    offsets = arrival_offsets(len(requests), request_rate, seed)

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await _warm_up(client, config)
        start = time.perf_counter()

        async def one(request: BenchRequest, offset: float) -> RequestResult:
            await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            if slots is None:
                result = await send_request(client, config, request, tokenizer, start)
            else:
                async with slots:
                    result = await send_request(client, config, request, tokenizer, start)
            if on_done is not None:
                on_done(result)
            return result

        results = await asyncio.gather(*(one(r, o) for r, o in zip(requests, offsets)))
        return list(results), time.perf_counter() - start


def first_model(base_url: str, api_key: str | None) -> str:
    """The first model a server lists: what a run measures when no --model is given."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(base_url.rstrip("/") + "/v1/models", headers=headers, timeout=30.0)
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        raise ValueError(f"{base_url}/v1/models lists no model; pass --model")
    return models[0]["id"]
