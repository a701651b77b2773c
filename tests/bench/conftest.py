"""Servers for the benchmark tests: a tiny fake OpenAI-compatible server with known delays, and the
real `seekd serve` on the demo model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from live_server import running_server

from seekd.models.demo import ensure_demo_model
from seekd.text.tokenizer import Tokenizer

WORDS = (" alpha", " beta", " gamma", " delta", " token", " river", " stone", " cloud", " green", " light")


@dataclass
class FakeOpenAIServer:
    """Streams max_tokens words (one token each in DeepSeek's tokenizer): the first after `ttft_s`,
    then one every `itl_s`. Chat streams open with a role-only chunk at once, as seekd and vLLM do.
    Prompts containing STATUS=<code> get that error status; HANG never answers; after the first
    word, CUT drops the connection mid-body and QUIT ends the body cleanly, both without [DONE]."""

    ttft_s: float = 0.2
    itl_s: float = 0.04
    send_usage: bool = True
    port: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict] = field(default_factory=list)
    # prompt -> (request received, each token sent), on the test process's perf_counter clock: what the
    # server really did, which a loaded machine can make later than the injected delays
    sent: dict[str, tuple[float, list[float]]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeOpenAIServer]:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        stop: asyncio.Future | None = None

        async def serve() -> None:
            nonlocal stop
            stop = loop.create_future()
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                await stop
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in handlers:  # e.g. a HANG request whose client gave up
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
        thread.start()
        assert started.wait(10)
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop.set_result, None)
            thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            path = lines[0].split()[1]
            headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
            length = int({k.lower(): v for k, v in headers.items()}.get("content-length", 0))
            body = json.loads(await reader.readexactly(length)) if length else {}
            if path == "/v1/models":
                await self._respond(writer, 200, {"object": "list", "data": [{"id": "fake-model"}]})
                return
            received = time.perf_counter()
            self.bodies.append(body)
            prompt = body.get("prompt") or body["messages"][-1]["content"]
            if "HANG" in prompt:
                await asyncio.sleep(3600)
            if "STATUS=" in prompt:
                status = int(prompt.split("STATUS=")[1][:3])
                await self._respond(writer, status, {"error": {"message": "injected", "code": status}})
                return
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                self.sent[prompt] = (received, [])
                await self._stream(writer, body, self.sent[prompt][1])
            finally:
                self.in_flight -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, body: dict, token_times: list[float]) -> None:
        chat = "messages" in body

        async def event(payload: dict | str) -> None:
            data = f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()

        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
        )
        if chat:
            await event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        num_tokens = body["max_tokens"]
        prompt = body.get("prompt") or body["messages"][-1]["content"]
        for i in range(num_tokens):
            await asyncio.sleep(self.ttft_s if i == 0 else self.itl_s)
            word = WORDS[i % len(WORDS)]
            choice = {"index": 0, "delta": {"content": word}} if chat else {"index": 0, "text": word}
            if i == num_tokens - 1:
                choice["finish_reason"] = "length"
            await event({"choices": [choice]})
            token_times.append(time.perf_counter())
            if "CUT" in prompt:
                return  # the handler closes the socket: the chunked body never ends
            if "QUIT" in prompt:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                return
        if self.send_usage and (body.get("stream_options") or {}).get("include_usage"):
            await event(
                {
                    "choices": [],
                    "usage": {"prompt_tokens": 7, "completion_tokens": num_tokens, "total_tokens": 7 + num_tokens},
                }
            )
        await event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer().running() as server:
        yield server


@pytest.fixture(scope="session")
def demo_folder(data_dir: Path) -> Path:
    return ensure_demo_model(data_dir)


@pytest.fixture(scope="session")
def demo_tokenizer(demo_folder: Path) -> Tokenizer:
    return Tokenizer(demo_folder)


@pytest.fixture(scope="module")
def seekd_server(data_dir: Path, demo_folder: Path, tmp_path_factory) -> Iterator[str]:
    """The real `seekd serve` (demo model, CPU) as a subprocess on loopback; yields its base URL."""
    log_path = tmp_path_factory.mktemp("bench-server") / "server.log"
    with running_server(data_dir, log_path) as handle:
        yield handle.base_url
