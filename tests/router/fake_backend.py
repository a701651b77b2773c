"""A small real OpenAI-compatible server (FastAPI on uvicorn, in a thread of the test process) whose
behaviour a test sets while it runs: its model name, speed, and injected errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


@dataclass
class FakeBackend:
    """Answers `"<name> says: <prompt>"` as `model`. `fail_status` makes every request fail with that
    status (429 with Retry-After); `ready` False makes /ready answer 503; `delay_s` is the time to the
    first token and `itl_s` between tokens of a stream of `max_tokens` words."""

    name: str
    model: str = "fake-model"
    delay_s: float = 0.0
    itl_s: float = 0.0
    fail_status: int | None = None
    ready: bool = True
    port: int = 0
    requests: int = 0
    in_flight: int = 0
    bodies: list[dict] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/ready")
        async def ready() -> JSONResponse:
            return JSONResponse({"status": "ready" if self.ready else "not_ready"}, 200 if self.ready else 503)

        @app.post("/v1/chat/completions")
        @app.post("/v1/completions")
        async def complete(request: Request):
            body = await request.json()
            self.requests += 1
            self.bodies.append(body)
            if self.fail_status is not None:
                headers = {"Retry-After": "1"} if self.fail_status == 429 else None
                error = {"error": {"message": f"injected {self.fail_status}", "type": "server_error", "code": None}}
                return JSONResponse(error, self.fail_status, headers=headers)
            prompt = body.get("prompt") or body["messages"][-1]["content"]
            text = f"{self.name} says: {prompt}"
            if body.get("stream"):
                return StreamingResponse(self._stream(body, text), media_type="text/event-stream")
            self.in_flight += 1
            try:
                await asyncio.sleep(self.delay_s)
            finally:
                self.in_flight -= 1
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return {"id": "chatcmpl-fake", "object": "chat.completion", "model": self.model, "choices": [choice]}

        return app

    async def _stream(self, body: dict, text: str):
        self.in_flight += 1
        try:
            yield _event(
                {"model": self.model, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
            )
            await asyncio.sleep(self.delay_s)
            words = [text, *[f" w{i}" for i in range(1, int(body.get("max_tokens") or 1))]]
            for word in words:
                yield _event({"model": self.model, "choices": [{"index": 0, "delta": {"content": word}}]})
                await asyncio.sleep(self.itl_s)
            yield "data: [DONE]\n\n"
        finally:
            self.in_flight -= 1

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeBackend]:
        server = uvicorn.Server(uvicorn.Config(self.app(), host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "fake backend did not start"
            time.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.should_exit = True
            thread.join(10)


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
